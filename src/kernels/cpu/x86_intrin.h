// <immintrin.h> for the kernels that compile AVX-512 code by target attribute or pragma
// (exp_avx512.h, panel_gemm.cpp). GCC 12's AVX-512 headers give unmasked intrinsics an
// undefined pass-through that -Wmaybe-uninitialized reports once inlined; the state at the
// headers' lines is the one that counts, so the warning is off for the include alone.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic push
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
