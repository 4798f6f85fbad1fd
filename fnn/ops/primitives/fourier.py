"""The gate of JAX's FFT primitive: `lax.fft` in its four types (jnp.fft.fft/ifft/rfft/irfft and
their n-dimensional forms), over the last len(fft_lengths) axes.

The FFT is linear, so its VJP is its transpose under JAX's pairing Re(sum(a * b)) (see
fnn.ops.primitives.complex_parts), written as JAX writes it (jax/_src/lax/fft.py):

    FFT, IFFT   the same transform of g: the DFT matrix F (and F^-1 = conj(F) / N) is symmetric
    RFFT        N irfft(conj(g) / m): the half spectrum kept stands for both halves, so the
                terms of g that have a mirror image (all but the DC and Nyquist ones) count once
                in irfft's sum where they counted twice in the transpose (m = 1 at DC and
                Nyquist, 2 elsewhere), and conj undoes irfft's sign of the exponent
    IRFFT       conj(m rfft(g) / N): the transpose of the Hermitian extension, then irfft's 1 / N
"""

import math

import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from fnn.autodiff.case_values import cnormal, normal
from fnn.autodiff.gate import primitive_gate
from fnn.autodiff.primitive_cases import case

FFT, IFFT, RFFT, IRFFT = (lax.FftType.FFT, lax.FftType.IFFT, lax.FftType.RFFT, lax.FftType.IRFFT)


def _mask(n_half: int, length: int, like, dtype):
    """(n_half,) in `dtype`: 1 at the DC term (and the Nyquist term of an even length), 2
    elsewhere, shaped to broadcast along the last axis of `like`."""
    mask = np.full((n_half,), 2.0)
    mask[0] = 1.0
    if length % 2 == 0:
        mask[n_half - 1] = 1.0
    return lax.expand_dims(lax.convert_element_type(mask, dtype), tuple(range(like.ndim - 1)))


def _fft(x, fft_type, fft_lengths):
    return P.fft_p.bind(x, fft_type=fft_type, fft_lengths=tuple(fft_lengths))


@primitive_gate(P.fft_p, save="none", params=("fft_type", "fft_lengths"), complex=True)
def fft(g, saved, *, fft_type, fft_lengths, **params):
    """The discrete Fourier transform of the last len(fft_lengths) axes: FFT, IFFT, RFFT (real
    in, half spectrum out), IRFFT (half spectrum in, real out).  Local gradient (its transpose,
    JAX's convention): the same transform for FFT and IFFT; N irfft(conj(g) / m) for RFFT;
    conj(m rfft(g) / N) for IRFFT (m: 1 at DC and Nyquist, 2 elsewhere; N = prod(fft_lengths))."""
    n = math.prod(fft_lengths)
    if fft_type == RFFT:
        mask = _mask(g.shape[-1], fft_lengths[-1], g, g.dtype)
        out = _fft(lax.div(lax.conj(g), mask), IRFFT, fft_lengths)
        return (lax.mul(np.asarray(n, out.dtype), out),)
    if fft_type == IRFFT:
        x = _fft(g, RFFT, fft_lengths)
        mask = _mask(x.shape[-1], fft_lengths[-1], x, x.dtype)
        return (lax.conj(lax.mul(lax.mul(np.asarray(1 / n, x.dtype), mask), x)),)
    return (_fft(g, fft_type, fft_lengths),)


@fft.defcases
def _fft_cases(rng, dtype):
    z = cnormal(rng, (2, 3, 4), dtype)
    x_even, x_odd = normal(rng, (3, 6), dtype), normal(rng, (2, 3, 5), dtype)
    return [
        case(P.fft_p, lambda z: lax.fft(z, FFT, (4,)), z, label="fft, 1 axis"),
        case(P.fft_p, lambda z: lax.fft(z, FFT, (3, 4)), z, label="fft, 2 axes"),
        case(P.fft_p, lambda z: lax.fft(z, IFFT, (2, 3, 4)), z, label="ifft, 3 axes"),
        case(P.fft_p, lambda x: lax.fft(x, RFFT, (6,)), x_even, label="rfft, even"),
        case(P.fft_p, lambda x: lax.fft(x, RFFT, (3, 5)), x_odd, label="rfft, 2 axes, odd"),
        case(
            P.fft_p,
            lambda z: lax.fft(z, IRFFT, (6,)),
            cnormal(rng, (3, 4), dtype),
            label="irfft, even",
        ),
        case(
            P.fft_p,
            lambda z: lax.fft(z, IRFFT, (2, 5)),
            cnormal(rng, (2, 3), dtype),
            label="irfft, 2 axes, odd",
        ),
    ]


fft.defkinks(smooth=True)
