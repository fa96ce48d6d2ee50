#!/usr/bin/env python3
"""Reproduces the AdamW examples of tests/unit/test_optimizer.cpp (MatchesHandExampleTwoSteps,
MatchesTorchOverTwelveSteps) with torch.optim.AdamW and prints the parameters as float32 with 9
significant digits, in the form pasted into the C++ test.

Run: /usr/bin/python3 tests/reference/adamw_check.py
"""
import math

import torch

P0 = [0.5, -1.25, 2.0, 0.0, 3.0]
GRADS = [[0.1, -0.2, 0.3, 1.0, -4.0], [-0.05, 0.4, 0.3, -2.0, 0.0]]
LRS = [0.01, 0.02]


def run(decay):
    p = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=LRS[0], betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1 if decay else 0.0)
    out = []
    for g, lr in zip(GRADS, LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        out.append(p.detach().clone())
    return out


def run_long():
    """AdamW.MatchesTorchOverTwelveSteps: 7 elements, g[i] = float32(sin(0.7 i + 1.3 s) * 0.5),
    lr = 1e-2 / (1 + s), default betas (0.9, 0.95), eps 1e-8, weight_decay 0.1, s = 0..11."""
    p = torch.nn.Parameter(torch.tensor([0.1 * i - 0.3 for i in range(7)], dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for s in range(12):
        for group in opt.param_groups:
            group["lr"] = 1e-2 / (1 + s)
        p.grad = torch.tensor([math.sin(0.7 * i + 1.3 * s) * 0.5 for i in range(7)],
                              dtype=torch.float32)
        opt.step()
    return p.detach()


def main():
    torch.set_num_threads(1)
    print("torch", torch.__version__)
    for decay in (True, False):
        for step, t in enumerate(run(decay), start=1):
            vals = ", ".join("%.9gf" % v for v in t.tolist())
            print("decay=%s step %d: {%s}" % (decay, step, vals))
    print("12 steps: {%s}" % ", ".join("%.9gf" % v for v in run_long().tolist()))


if __name__ == "__main__":
    main()
