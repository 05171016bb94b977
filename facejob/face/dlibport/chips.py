"""Face chips exactly as ``dlib.get_face_chips`` cuts them, in vectorised numpy.

dlib aligns a face in three steps (dlib/image_transforms/interpolation.h):

1. ``get_face_chip_details``: a least-squares similarity transform (Umeyama) from a template in
   chip space to the landmarks gives an angle, a scale and a centre; the chip is the rect of side
   size·scale around that centre, rotated by the angle. For 68 landmarks dlib fits 33 of them
   (eyes, nose, upper lip) to its own mean face.
2. ``extract_image_chips``: a face whose rect is over twice the chip size is first shrunk with
   ``pyramid_down<2>`` (5-tap [1 4 6 4 1] integer filter). dlib builds the pyramid once per call
   on the crop around *all* the faces passed together, so a big face's pixels depend on its
   companions: call :func:`extract_chips` with the faces dlib would get together.
3. Bilinear sampling in double, truncation to uint8, black where the 2×2 neighbourhood leaves
   the source.

The port is bit-exact, not close: chips in flat regions (one grey value everywhere) flip by one
level on the last bit of the sampling map, so every double operation that feeds it follows
dlib's order, including the SVDs inside its similarity fit and its pseudo-inverse (dlib without
LAPACK) and the way its expression templates move scalar factors. Shortcuts cost descriptor
distance 0.004-0.09 (shared/docs/dlib-model-facts.md). Only the integer pyramid is reordered
(exact either way) and computed on the window each face needs instead of dlib's whole crop.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facejob.face.dlibport.geometry import round_rect

# dlib's 5-point template in the order the 5-point predictor returns its parts.
TEMPLATE5 = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])

# dlib's mean face for the 68-point (iBUG 300-W) parts 17..67.
_MEAN68_X = [
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
]
_MEAN68_Y = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
]
# For 68 points dlib fits only the eyes, nose and upper lip/mouth corners: it skips the jaw
# (0-16), the eyebrows (17-26) and the lower lip (55-59, 65-67). 33 parts remain.
PARTS68 = [i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)]
TEMPLATE68 = np.array([[_MEAN68_X[i - 17], _MEAN68_Y[i - 17]] for i in PARTS68])


@dataclass(frozen=True)
class ChipDetails:
    """dlib's ``chip_details``: a rect (inclusive double corners) rotated by ``angle`` radians."""

    left: float
    top: float
    right: float
    bottom: float
    angle: float
    rows: int
    cols: int

    @property
    def rect(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.right, self.bottom)


# --- small pieces of dlib geometry, scalar and in dlib's operation order -----------------------

def _rect_area(l: float, t: float, r: float, b: float) -> float:
    if t > b or l > r:
        return 0.0
    return (r - l + 1) * (b - t + 1)


def _rect_down(l: float, t: float, r: float, b: float) -> tuple[float, float, float, float]:
    # pyramid_down<2>::rect_down maps each corner p -> p/2 - (1.25, 0.75)
    return (l / 2.0 - 1.25, t / 2.0 - 0.75, r / 2.0 - 1.25, b / 2.0 - 0.75)


def _rotate(cx: float, cy: float, x: float, y: float, sin_a: float, cos_a: float) -> tuple[float, float]:
    # dlib rotate_point: rot(p - center) + center
    dx, dy = x - cx, y - cy
    return (cos_a * dx - sin_a * dy + cx, sin_a * dx + cos_a * dy + cy)


def _svd4(a: list[list[float]]) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """dlib's svd4 (Golub-Reinsch, from the Algol of the Handbook), as svd3 calls it for m >= n.

    Returns (u, q, v) with a = u·diag(q)·vᵀ, u skinny (m×n). Ported operation for operation:
    dlib without LAPACK runs exactly this, and chip pixels in flat regions flip by one grey
    level on the last bit of the sampling map, so a LAPACK SVD will not do.
    """
    m, n = len(a), len(a[0])
    eps = 2.220446049250313e-16
    tol = 2.2250738585072014e-308 / eps
    u = [[float(x) for x in row] for row in a]
    q = [0.0] * n
    e = [0.0] * n
    v = [[0.0] * n for _ in range(n)]
    l = 0
    g = x = 0.0
    # Householder reduction to bidiagonal form
    for i in range(n):
        e[i] = g
        s = 0.0
        l = i + 1
        for j in range(i, m):
            s += u[j][i] * u[j][i]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i] = f - g
            for j in range(l, n):
                s = 0.0
                for k in range(i, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
        q[i] = g
        s = 0.0
        for j in range(l, n):
            s += u[i][j] * u[i][j]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i + 1]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i + 1] = f - g
            for j in range(l, n):
                e[j] = u[i][j] / h
            for j in range(l, m):
                s = 0.0
                for k in range(l, n):
                    s += u[j][k] * u[i][k]
                for k in range(l, n):
                    u[j][k] += s * e[k]
        y = abs(q[i]) + abs(e[i])
        if y > x:
            x = y
    # accumulation of right-hand transformations
    for i in range(n - 1, -1, -1):
        if g != 0.0:
            h = u[i][i + 1] * g
            for j in range(l, n):
                v[j][i] = u[i][j] / h
            for j in range(l, n):
                s = 0.0
                for k in range(l, n):
                    s += u[i][k] * v[k][j]
                for k in range(l, n):
                    v[k][j] += s * v[k][i]
        for j in range(l, n):
            v[i][j] = v[j][i] = 0.0
        v[i][i] = 1.0
        g = e[i]
        l = i
    # accumulation of left-hand transformations (skinny u: n columns)
    for i in range(n - 1, -1, -1):
        l = i + 1
        g = q[i]
        for j in range(l, n):
            u[i][j] = 0.0
        if g != 0.0:
            h = u[i][i] * g
            for j in range(l, n):
                s = 0.0
                for k in range(l, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
            for j in range(i, m):
                u[j][i] /= g
        else:
            for j in range(i, m):
                u[j][i] = 0.0
        u[i][i] += 1.0
    # diagonalisation of the bidiagonal form
    eps *= x
    for k in range(n - 1, -1, -1):
        iterations = 0
        while True:  # test_f_splitting
            l = k
            converged = False
            while l >= 0:
                if abs(e[l]) <= eps:
                    converged = True
                    break
                if l >= 1 and abs(q[l - 1]) <= eps:
                    break
                l -= 1
            if not converged:  # cancellation of e[l] if l > 0
                c, s = 0.0, 1.0
                l1 = l - 1
                for i in range(l, k + 1):
                    f = s * e[i]
                    e[i] *= c
                    if abs(f) <= eps:
                        break
                    g = q[i]
                    h = q[i] = math.sqrt(f * f + g * g)
                    c = g / h
                    s = -f / h
                    for j in range(m):
                        y = u[j][l1]
                        z = u[j][i]
                        u[j][l1] = y * c + z * s
                        u[j][i] = -y * s + z * c
            # test_f_convergence
            z = q[k]
            if l == k:
                break
            iterations += 1
            if iterations > 300:
                raise ArithmeticError("svd did not converge")
            # shift from bottom 2x2 minor
            x = q[l]
            y = q[k - 1]
            g = e[k - 1]
            h = e[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2 * h * y)
            g = math.sqrt(f * f + 1.0)
            f = ((x - z) * (x + z) + h * (y / ((f - g) if f < 0 else (f + g)) - h)) / x
            # next QR transformation
            c = s = 1.0
            for i in range(l + 1, k + 1):
                g = e[i]
                y = q[i]
                h = s * g
                g *= c
                e[i - 1] = z = math.sqrt(f * f + h * h)
                c = f / z
                s = h / z
                f = x * c + g * s
                g = -x * s + g * c
                h = y * s
                y *= c
                for j in range(n):
                    x = v[j][i - 1]
                    z = v[j][i]
                    v[j][i - 1] = x * c + z * s
                    v[j][i] = -x * s + z * c
                q[i - 1] = z = math.sqrt(f * f + h * h)
                if z != 0:
                    c = f / z
                    s = h / z
                f = c * g + s * y
                x = -s * g + c * y
                for j in range(m):
                    y = u[j][i - 1]
                    z = u[j][i]
                    u[j][i - 1] = y * c + z * s
                    u[j][i] = -y * s + z * c
            e[l] = 0.0
            e[k] = f
            q[k] = x
        # convergence: make q[k] non-negative
        if z < 0.0:
            q[k] = -z
            for j in range(n):
                v[j][k] = -v[j][k]
    return u, q, v


def _matmul(x: list[list[float]], y: list[list[float]]) -> list[list[float]]:
    # dlib sums k in order starting from the first product
    out = []
    for row in x:
        out_row = []
        for c in range(len(y[0])):
            acc = row[0] * y[0][c]
            for k in range(1, len(y)):
                acc += row[k] * y[k][c]
            out_row.append(acc)
        out.append(out_row)
    return out


@functools.lru_cache(maxsize=16)
def _chip_corner_pinv(rows: int, cols: int) -> tuple[tuple[float, ...], ...]:
    """dlib pinv(P) for P = the chip corners (0,0), (cols-1,0), (0,rows-1) in homogeneous columns."""
    p = [[0.0, float(cols - 1), 0.0], [0.0, 0.0, float(rows - 1)], [1.0, 1.0, 1.0]]
    u, w, v = _svd4(p)
    eps = 2.220446049250313e-16 * 3 * max(w)
    inv_w = [0.0 if -eps < x < eps else 1.0 / x for x in w]
    vs = [[v[r][c] * inv_w[c] for c in range(3)] for r in range(3)]
    ut = [[u[c][r] for c in range(3)] for r in range(3)]
    return tuple(tuple(row) for row in _matmul(vs, ut))


def _similarity(src: list[tuple[float, float]], dst: list[tuple[float, float]]
                ) -> tuple[list[list[float]], tuple[float, float]]:
    """dlib find_similarity_transform (Umeyama, eqs. 34-43): (M, t) with dst ≈ M·src + t."""
    n = len(src)
    mfx = mfy = mtx = mty = 0.0
    for (fx, fy), (tx, ty) in zip(src, dst):
        mfx += fx; mfy += fy; mtx += tx; mty += ty
    mfx /= n; mfy /= n; mtx /= n; mty /= n
    sigma_from = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (fx, fy), (tx, ty) in zip(src, dst):
        fx, fy, tx, ty = fx - mfx, fy - mfy, tx - mtx, ty - mty
        sigma_from += fx * fx + fy * fy
        cov[0][0] += tx * fx; cov[0][1] += tx * fy
        cov[1][0] += ty * fx; cov[1][1] += ty * fy
    sigma_from /= n
    inv_n = 1.0 / n  # dlib divides a double matrix by multiplying with the reciprocal
    cov = [[x * inv_n for x in row] for row in cov]
    u, d, v = _svd4(cov)
    s = [1.0, 1.0]
    det_cov = cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0]
    det_u = u[0][0] * u[1][1] - u[0][1] * u[1][0]
    det_v = v[0][0] * v[1][1] - v[0][1] * v[1][0]
    if det_cov < 0 or (det_cov == 0 and det_u * det_v < 0):
        if d[1] < d[0]:
            s[1] = -1.0
        else:
            s[0] = -1.0
    us = [[u[r][0] * s[0], u[r][1] * s[1]] for r in range(2)]
    vt = [[v[0][0], v[1][0]], [v[0][1], v[1][1]]]
    r = _matmul(us, vt)
    c = 1.0
    if sigma_from != 0:
        c = 1.0 / sigma_from * (d[0] * s[0] + d[1] * s[1])
    m = [[r[0][0] * c, r[0][1] * c], [r[1][0] * c, r[1][1] * c]]
    # dlib's expression templates move the scalar outside the product: (r·mean_from)·c
    t = (mtx - (r[0][0] * mfx + r[0][1] * mfy) * c, mty - (r[1][0] * mfx + r[1][1] * mfy) * c)
    return m, t


def chip_details(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib ``get_face_chip_details`` for a (5,2) or (68,2) landmark array in (x, y) order."""
    pts = np.asarray(landmarks)
    if padding < 0 or size < 2:
        raise ValueError(f"need padding >= 0 and size >= 2, got {padding}, {size}")
    if pts.shape == (5, 2):
        # dlib: (padding + p)/(2*padding + 1) on a dpoint, i.e. times the reciprocal
        k = 1.0 / (2 * padding + 1)
        chip_pts = [((padding + x) * k * size, (padding + y) * k * size) for x, y in TEMPLATE5.tolist()]
        parts = pts
    elif pts.shape == (68, 2):
        # dlib: the same formula on scalars, i.e. a true division
        chip_pts = [((padding + x) / (2 * padding + 1) * size, (padding + y) / (2 * padding + 1) * size)
                    for x, y in TEMPLATE68.tolist()]
        parts = pts[PARTS68]
    else:
        raise ValueError(f"landmarks must be (5, 2) or (68, 2), got {pts.shape}")
    m, t = _similarity(chip_pts, [(float(x), float(y)) for x, y in parts.tolist()])
    # scale and angle come from where the transform sends the x axis
    px, py = m[0][0], m[1][0]
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    half = size / 2.0
    cx = m[0][0] * half + m[0][1] * half + t[0]
    cy = m[1][0] * half + m[1][1] * half + t[1]
    # centered_drect(centre, size*scale, size*scale): inclusive corners, hence the -1
    w = size * scale - 1
    return ChipDetails(cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2, angle, size, size)


# --- image side --------------------------------------------------------------------------------

def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib ``pyramid_down<2>`` on an RGB uint8 image: [1 4 6 4 1]² / 256, truncated.

    Output (rows-3)//2 × (cols-3)//2, empty when either side is at most 8.
    """
    if img.shape[0] <= 8 or img.shape[1] <= 8:
        return np.zeros((0, 0, 3), np.uint8)
    return _pyramid_filter(img)


def _pyramid_filter(img: np.ndarray) -> np.ndarray:
    """The arithmetic of pyramid_down<2>: output (r, c) reads input rows 2r..2r+4, columns
    2c..2c+4. The sums are exact in uint16 (at most 255·256), so unlike dlib we may run the
    vertical pass first and on planar channels, which numpy does much faster."""
    nr, nc = img.shape[:2]
    orr, oc = (nr - 3) // 2, (nc - 3) // 2
    x = img[:, :2 * oc + 3].transpose(2, 0, 1)
    e = 2 * orr
    v = x[:, 0:e:2].astype(np.uint16)
    v += x[:, 4:e + 4:2]
    a = x[:, 1:e + 1:2].astype(np.uint16)
    a += x[:, 3:e + 3:2]
    a <<= 2
    v += a
    a = x[:, 2:e + 2:2].astype(np.uint16)
    a *= 6
    v += a
    e = 2 * oc
    out = v[:, :, 0:e:2].copy()
    out += v[:, :, 4:e + 4:2]
    a = v[:, :, 1:e + 1:2].copy()
    a += v[:, :, 3:e + 3:2]
    a <<= 2
    out += a
    a = v[:, :, 2:e + 2:2].copy()
    a *= 6
    out += a
    out >>= 8
    return np.ascontiguousarray(out.transpose(1, 2, 0), dtype=np.uint8)


def _level_shapes(crop_shape: tuple[int, int], depth: int) -> list[tuple[int, int]]:
    """(rows, cols) of pyramid levels 0..depth-1 built on a crop of ``crop_shape``."""
    shapes = []
    nr, nc = crop_shape
    for _ in range(depth):
        nr, nc = (0, 0) if nr <= 8 or nc <= 8 else ((nr - 3) // 2, (nc - 3) // 2)
        shapes.append((nr, nc))
    return shapes


def _level_window(crop: np.ndarray, level: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0..r1, columns c0..c1 of pyramid level ``level`` (0 = the first pyramid_down of
    ``crop``), computed from just the part of ``crop`` they depend on.

    dlib builds every level over the whole crop around all faces; a window gives the same pixels
    (each level reads its parent at even offsets) for the cost of the face alone.
    """
    for _ in range(level + 1):
        r0, r1, c0, c1 = 2 * r0, 2 * r1 + 4, 2 * c0, 2 * c1 + 4
    x = crop[r0:r1 + 1, c0:c1 + 1]
    for _ in range(level + 1):
        x = _pyramid_filter(x)
    return x


def _packed(region: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 → (h, w) 4-byte pixels (r, g, b, 0): a gather then moves a pixel as one
    machine word, 2-3x faster than a 3-byte void at a time."""
    out = np.zeros((*region.shape[:2], 4), np.uint8)
    out[..., :3] = region
    return out.view(np.uint32)[..., 0]


class _BilinearSampler:
    """dlib ``interpolate_bilinear`` for (rows, cols) chips, with work buffers reused per chip.

    The arithmetic runs on planar float64 copies of the four neighbours (long inner loops),
    in dlib's operation order: (1-tb)·((1-lr)·tl + lr·tr) + tb·((1-lr)·bl + lr·br).
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.idx = np.empty((rows, cols), np.intp)
        self.corners = np.empty((4, rows, cols), np.uint32)
        self.values = np.empty((4, 3, rows, cols))
        self.weight = np.empty((rows, cols))

    def __call__(self, src: np.ndarray, origin: tuple[int, int], xs: np.ndarray, ys: np.ndarray,
                 left: np.ndarray, top: np.ndarray, ok: np.ndarray | None, bounds: tuple[int, int, int, int],
                 out: np.ndarray) -> None:
        """Sample ``src`` at float64 points ``xs``, ``ys`` into ``out`` (rows, cols, 3) uint8.
        ``left``/``top`` are the floors of the points, ``ok`` marks those whose 2×2
        neighbourhood lies in the source (the rest are black; None: all of them), ``bounds``
        the least and greatest ``top`` and ``left`` among those; point (x, y) reads ``src``
        pixel (y + origin[1], x + origin[0])."""
        lr = xs - left
        tb = ys - top
        r0, r1, c0, c1 = bounds
        # only the pixels this chip reads are packed (the source may be a whole large photo)
        pixels = _packed(src[r0 + origin[1]:r1 + origin[1] + 2, c0 + origin[0]:c1 + origin[0] + 2])
        stride = pixels.shape[1]
        r = top - r0
        r *= stride
        r += left
        r -= c0
        if ok is not None:
            r[~ok] = 0
        idx, corners = self.idx, self.corners
        idx[...] = r
        flat = pixels.reshape(-1)
        np.take(flat, idx, out=corners[0])
        idx += 1
        np.take(flat, idx, out=corners[1])
        idx += stride - 1
        np.take(flat, idx, out=corners[2])
        idx += 1
        np.take(flat, idx, out=corners[3])
        np.copyto(self.values, corners.view(np.uint8).reshape(4, *idx.shape, 4)[..., :3].transpose(0, 3, 1, 2))
        tl, tr, bl, br = self.values
        inv = np.subtract(1, lr, out=self.weight)
        tl *= inv
        tr *= lr
        tl += tr
        bl *= inv
        br *= lr
        bl += br
        np.subtract(1, tb, out=inv)
        tl *= inv
        bl *= tb
        tl += bl
        # assign_pixel saturates, then truncates: a weighted mean of 0..255 never leaves
        # [0, 256), so truncating alone is the same
        planar = tl.astype(np.uint8)
        if ok is not None:
            planar[:, ~ok] = 0
        out[...] = planar.transpose(1, 2, 0)


def extract_chips(
    image: np.ndarray,
    landmarks: Sequence[np.ndarray],
    size: int = 150,
    padding: float = 0.25,
) -> np.ndarray:
    """The faces of one RGB uint8 image (H, W, 3) as (n, size, size, 3) uint8 chips.

    ``landmarks``: one (5, 2) or (68, 2) integer (x, y) array per face, as dlib's shape
    predictors return them. Same pixels as ``dlib.get_face_chips(image, shapes, size, padding)``
    called with these faces together: dlib builds one pyramid for all of them, so a big face's
    chip can differ (by a grey level here and there) from cutting it alone.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be an RGB uint8 array (H, W, 3)")
    if len(landmarks) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    # dlib's Python get_face_chips takes padding as a C float
    padding = float(np.float32(padding))
    return extract_image_chips(image, [chip_details(lm, size, padding) for lm in landmarks])


def extract_image_chips(image: np.ndarray, dets: Sequence[ChipDetails]) -> np.ndarray:
    """dlib ``extract_image_chips`` with bilinear interpolation, for chips of one size."""
    n = len(dets)
    if n == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    rows, cols = dets[0].rows, dets[0].cols
    if any(d.rows != rows or d.cols != cols for d in dets):
        raise ValueError("all chips must have the same size")
    nr, nc = image.shape[:2]
    chip_area = rows * cols

    # How deep a pyramid each chip needs, and the crop (union over all chips) it is built on.
    max_depth = 0
    bbox: tuple[int, int, int, int] | None = None
    for d in dets:
        depth, grow = 0, 2.0
        rect = _rect_down(*d.rect)
        while _rect_area(*rect) > chip_area:
            rect = _rect_down(*rect)
            depth += 1
            grow = grow * 2 + 2  # the crop needs a border that grows with the depth
        corners = _rotated_corners(d.rect, d.angle)
        xs = [p[0] for p in corners]
        ys = [p[1] for p in corners]
        r = round_rect(max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0),
                        min(max(xs) + grow, nc - 1.0), min(max(ys) + grow, nr - 1.0))
        if not (r[1] > r[3] or r[0] > r[2]):
            bbox = r if bbox is None else (min(bbox[0], r[0]), min(bbox[1], r[1]),
                                           max(bbox[2], r[2]), max(bbox[3], r[3]))
        max_depth = max(depth, max_depth)
    chips = np.zeros((n, rows, cols, 3), np.uint8)
    if bbox is None:  # every chip lies off the image
        return chips
    x0, y0 = bbox[0], bbox[1]
    image = np.ascontiguousarray(image)
    crop = image[y0:bbox[3] + 1, x0:bbox[2] + 1]
    level_shapes = _level_shapes(crop.shape[:2], max_depth)

    sample = _BilinearSampler(rows, cols)
    for i, d in enumerate(dets):
        if d.angle == 0 and d.bottom - d.top + 1 == rows and d.right - d.left + 1 == cols:
            chips[i] = _copy_rect(image, round_rect(*d.rect), rows, cols)
            continue
        level, xs, ys = chip_sampling(d, (x0, y0))
        src_rows, src_cols = crop.shape[:2] if level == -1 else level_shapes[level]
        left = np.floor(xs)
        top = np.floor(ys)
        # The map is affine and rounding is monotone, so along every row and every column of
        # the chip `left` and `top` are monotone: their extremes lie at the four corners. A chip
        # whose corners read inside the source needs no per-pixel bounds check.
        corners = ([0, 0, -1, -1], [0, -1, 0, -1])
        bounds = (int(top[corners].min()), int(top[corners].max()), int(left[corners].min()), int(left[corners].max()))
        ok = None
        if not (bounds[0] >= 0 and bounds[2] >= 0 and bounds[1] < src_rows - 1 and bounds[3] < src_cols - 1):
            ok = (left >= 0) & (top >= 0) & (left < src_cols - 1) & (top < src_rows - 1)
            if not ok.any():
                continue  # all black
            bounds = (int(top[ok].min()), int(top[ok].max()), int(left[ok].min()), int(left[ok].max()))
        if level == -1:
            sample(image, (x0, y0), xs, ys, left, top, ok, bounds, chips[i])
        else:
            r0, r1, c0, c1 = bounds
            window = _level_window(crop, level, r0, r1 + 1, c0, c1 + 1)
            sample(window, (-c0, -r0), xs, ys, left, top, ok, bounds, chips[i])
    return chips


def chip_sampling(d: ChipDetails, origin: tuple[float, float] = (0.0, 0.0)) -> tuple[int, np.ndarray, np.ndarray]:
    """Where dlib reads each chip pixel: ``(level, xs, ys)``, (rows, cols) float64 points.

    ``level`` -1: the points are in the image, relative to ``origin`` (x, y). ``level`` k >= 0:
    they are in pyramid level k, i.e. ``pyramid_down2`` applied k+1 times to the image cropped
    at ``origin``. Bilinear sampling there (truncated to uint8) gives the chip.
    """
    rows, cols = d.rows, d.cols
    chip_area = rows * cols
    level = -1
    rect = (d.left - origin[0], d.top - origin[1], d.right - origin[0], d.bottom - origin[1])
    while _rect_area(*_rect_down(*rect)) > chip_area:
        level += 1
        rect = _rect_down(*rect)
    (tlx, tly), (trx, try_), (blx, bly), _ = _rotated_corners(rect, d.angle)
    # dlib find_affine_transform: Q·pinv(P) with P the chip corners (0,0), (cols-1,0), (0,rows-1)
    (m00, m01, b0), (m10, m11, b1) = _matmul([[tlx, trx, blx], [tly, try_, bly]], _chip_corner_pinv(rows, cols))
    # m·(c, r) + b per pixel, the products taken once per column and per row (the same
    # doubles: IEEE addition commutes exactly)
    cc, rr = np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64)[:, None]
    xs = m00 * cc + m01 * rr
    xs += b0
    ys = m10 * cc + m11 * rr
    ys += b1
    return level, xs, ys


def chip_corners(d: ChipDetails) -> list[tuple[float, float]]:
    """Top-left, top-right, bottom-left, bottom-right corner of the chip in image pixels."""
    return _rotated_corners(d.rect, d.angle)


def _rotated_corners(rect: tuple[float, float, float, float], angle: float) -> list[tuple[float, float]]:
    """tl, tr, bl, br of a drectangle rotated about its centre (dlib rotate_point)."""
    l, t, r, b = rect
    sin_a, cos_a = math.sin(angle), math.cos(angle)
    cx, cy = (l + r) / 2.0, (t + b) / 2.0
    return [_rotate(cx, cy, x, y, sin_a, cos_a) for x, y in ((l, t), (r, t), (l, b), (r, b))]


def _copy_rect(image: np.ndarray, rect: tuple[int, int, int, int], rows: int, cols: int) -> np.ndarray:
    """dlib basic_extract_image_chip: an unscaled, unrotated crop, black outside the image."""
    out = np.zeros((rows, cols, 3), np.uint8)
    l, t, r, b = rect
    nr, nc = image.shape[:2]
    il, it, ir, ib = max(l, 0), max(t, 0), min(r, nc - 1), min(b, nr - 1)
    if il <= ir and it <= ib:
        out[it - t:ib - t + 1, il - l:ir - l + 1] = image[it:ib + 1, il:ir + 1]
    return out
