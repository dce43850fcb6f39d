"""Permutohedral-lattice bilateral filter, vectorised PyTorch (CPU and GPU).

This re-implements the approximation of the reference code (Krähenbühl's permutohedral lattice,
SSE build, as wrapped by ``bilateralfilter_batch``) operation for operation in float32, so that it
matches the reference's outputs to float rounding:

1. *Elevate* each 5-D feature onto the hyperplane of the 6-D lattice (Adams et al. 2010, p.5) and
   find the enclosing simplex: round each coordinate to the nearest multiple of d+1 (nearest-even,
   like the SSE build's ``cvtps2dq``), rank the remainders, wrap back onto the plane.
2. *Splat*: each pixel adds its values to the d+1 = 6 vertices of its simplex with barycentric
   weights.
3. *Blur*: for each of the d+1 lattice axes in turn, ``v ← v + ½(v[n₁] + v[n₂])`` (a missing
   neighbour counts as 0).
4. *Slice*: each pixel gathers its 6 vertices with the barycentric weights times
   ``1/(1 + 2⁻ᵈ)``. The result is **not** normalised.

The lattice is a hash table of integer keys. The reference builds it with a sequential C++ hash
table; here it is an open-addressing table filled by vectorised rounds of "claim an empty slot or
step to the next one" (:func:`_insert`), so that no step loops over pixels in Python and the same
code runs on CPU and CUDA. (A sort-based ``torch.unique(..., return_inverse=True)`` alone took
~165 ms single-threaded on the 2-core CI box for the 1.2 M corner keys of an 8×160×160 batch.)
Vertex numbering differs from the reference's, which only reorders the lattice and cannot change
any sum. On CPU each image (a group of images, for small ones) goes through the whole pipeline on
its own, so that its arrays stay in the caches; channels travel in pairs, one complex64 element
per pair, which halves the gathers and scatter-adds.

Approximation error against the exact Gaussian sum ``Σ_j exp(-|f_i - f_j|²/2) v_j`` (self term
included; :mod:`kernels.bilateral.reference`), measured with
``kernels.bilateral.bench.lattice_error`` (σ_rgb 15, σ_xy 50 as in the energy loss, K = 6
softmax channels, batch 2, seed 0; float64 reference):

    image                         L/E ratio: mean [1%, 99%]   best s   |L-sE|/|sE|   |L-E|/|E|
    smooth field + noise, 40×40   0.49   [0.34, 0.62]         0.50     0.077         0.50
    smooth field + noise, 64×64   0.54   [0.36, 0.65]         0.56     0.083         0.44
    smooth field + noise, 80×80   0.56   [0.37, 0.68]         0.59     0.069         0.41
    uniform random colour, 40×40  0.37   [0.10, 0.55]         0.41     0.167         0.60
    uniform random colour, 80×80  0.48   [0.28, 0.63]         0.50     0.128         0.50

(L: lattice, E: exact, s: the least-squares scale of E onto L; relative L2 norms.)

So the lattice under-weighs the Gaussian by a data- and size-dependent factor of about 0.4-0.6
and, once that factor is taken out, matches its shape to 7-17 % (relative L2). The σ convention
is the right one: rescaling both bandwidths of the exact sum by 0.8 or 1.2 fits the lattice
worse (8 % → 12-15 % after scaling, smooth 40×40).

Speed, batch 8 × 6 channels × 160×160 (``kernels.bilateral.bench`` inputs, σ_rgb 15, σ_xy 50),
against the official code's compiled extension (its SWIG wrapper of Krähenbühl's SSE lattice,
built with its own flags: -O3 -fopenmp) on the same inputs in the same process, outputs equal
bit for bit, on the 2-core CI box with nothing else running (third session), best of 10-15
calls: 61-85 ms with two threads against 85-98 ms for the extension (which spreads the images
over its two OpenMP threads), 1.15-1.4× faster on the smooth image, and 125 against 192 ms
(1.5×) on uniform random colours (2.2× more lattice vertices); single-threaded CPU time, with
the other core busy, 83 against 170 ms. Row
``official-cpp`` of ``python -m kernels.bench`` repeats the comparison wherever that module is
installed. Of the single-threaded time, roughly: simplices 20 %, keys 10 %, hash tables 40 %,
splat/blur/slice 30 %. With the other core busy, two OpenMP threads are several times slower
than one (barrier waits on ~10³ small operations per image).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ctfa_cli.errors import CtfaError
from kernels.bilateral.reference import pixel_features
from kernels.constants import device_constant

FEATURE_DIM = 5  # d: x, y, R, G, B
_EMPTY = -1  # marks a free slot of the hash table (packed keys are >= 0)
# Multiplicative (Fibonacci) hashing: 2^64 / golden ratio, as a signed int64.
_FIBONACCI = 0x9E3779B97F4A7C15 - (1 << 64)
# Keys per hash table on CPU: one 160×160 image (153 600 keys) per table was measured faster
# than two or all eight of a batch, whose tables and arrays spill out of the caches.
_CPU_KEYS_PER_TABLE = 1 << 18


@dataclass(frozen=True)
class Lattice:
    """A permutohedral lattice built over the n pixels of one group of whole images.

    Vertex ids run from 1 to M; id 0 is a vertex whose value is always 0, what a missing
    neighbour contributes.

    Attributes:
        vertices: ``[d+1, n]`` int64, the vertex at corner r of each pixel's simplex.
        weights: ``[d+1, n]`` float32 barycentric weights (they sum to 1 per pixel).
        neighbours: ``[d+1, 2·M]`` int64; row j holds the neighbour 1 of vertices 1..M along
            axis j, then their neighbour 2 (0 where missing).
        num_vertices: M.
    """

    vertices: Tensor
    weights: Tensor
    neighbours: Tensor
    num_vertices: int


def lattice_bilateral_filter(
    images: Tensor, values: Tensor, sigma_rgb: float, sigma_xy: float
) -> Tensor:
    """The reference's permutohedral bilateral filter, batched.

    Args:
        images: ``[B, 3, H, W]`` float32 RGB, 0..255.
        values: ``[B, K, H, W]`` float32, filtered channel by channel on the same lattice.
        sigma_rgb: colour bandwidth, in grey levels.
        sigma_xy: spatial bandwidth, in pixels.

    Returns:
        ``[B, K, H, W]`` float32 on the inputs' device, unnormalised (≈ the exact Gaussian sum
        with the self term; see the module docstring for the error).

    Raises:
        CtfaError: the features span too wide a range to pack lattice keys into 63 bits
            (only for bandwidths far below a grey level or a pixel).
    """
    batch, channels, height, width = values.shape
    num_pixels = height * width
    per_group = _images_per_group(images.device, batch, num_pixels)
    features = pixel_features(images.float(), sigma_rgb, sigma_xy)  # [B, d, N]
    pairs = _channel_pairs(values.float().reshape(batch, channels, num_pixels))  # [P, B, N, 2]
    filtered = torch.empty_like(pairs)
    for start in range(0, batch, per_group):
        group = slice(start, start + per_group)
        lattice = build_lattice(features[group])
        filter_on_lattice(
            lattice,
            pairs[:, group].reshape(pairs.shape[0], -1, 2),
            out=filtered[:, group].view(pairs.shape[0], -1, 2),
        )
    filtered = filtered.permute(1, 0, 3, 2).reshape(batch, -1, height, width)
    return filtered[:, :channels].contiguous()


def _images_per_group(device: torch.device, batch: int, pixels_per_image: int) -> int:
    """How many images share a hash table: a divisor of ``batch``.

    On CPU, as many as fit in about :data:`_CPU_KEYS_PER_TABLE` keys; on GPU, the whole batch
    (one table saves kernel launches).
    """
    if device.type != "cpu":
        return batch
    limit = max(1, _CPU_KEYS_PER_TABLE // ((FEATURE_DIM + 1) * pixels_per_image))
    return max(size for size in range(1, min(batch, limit) + 1) if batch % size == 0)


def _channel_pairs(values: Tensor) -> Tensor:
    """``[B, K, N]`` float32 → ``[P, B, N, 2]`` with P = ⌈K/2⌉: channels 2p and 2p+1 side by
    side (a zero channel pads an odd K), so that one complex64 element carries both.
    """
    batch, channels, num_pixels = values.shape
    if channels % 2:
        values = F.pad(values, (0, 0, 0, 1))
    return values.view(batch, -1, 2, num_pixels).permute(1, 0, 3, 2).contiguous()


def build_lattice(features: Tensor) -> Lattice:
    """Embed the ``[b, d, N]`` float32 features of b whole images in one lattice.

    Images never share a vertex: the image index is part of every key.
    """
    _, d, pixels_per_image = features.shape
    features = features.transpose(0, 1).reshape(d, -1)  # [d, n], image after image
    nearest_point, by_rank_index, weights = _enclosing_simplices(features)
    keys, strides = _corner_keys(nearest_point, by_rank_index, pixels_per_image)
    # Along axis j, neighbour 1 is key - 1 on every coordinate except j, which gets + d, and
    # neighbour 2 the opposite (for j = d, the implicit coordinate, every stored one gets - 1).
    # Packing is linear, so neighbour 1 is the packed key plus a constant step.
    steps = (d + 1) * strides - strides.sum()  # [d+1]
    vertices, neighbours = _number_vertices(keys, steps)
    return Lattice(
        vertices=vertices,
        weights=weights,
        neighbours=neighbours,
        num_vertices=neighbours.shape[1] // 2,
    )


def _number_vertices(keys: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
    """Number the distinct ``[d+1, n]`` keys and find their blur neighbours.

    On CPU with a hash table (:func:`_hashed_vertices`, measured faster there), elsewhere by
    sorting (:func:`_sorted_vertices`): the hash table's probing reads the number of keys still
    moving on the host after every round (about 20 reads per call, each waiting for the GPU),
    sorting reads one size. Both give the same filter output: the vertex numbering differs,
    what is added to each vertex, and in which order, does not.

    Returns:
        ``vertices`` ``[d+1, n]`` int64, the id (1..m) of every key, and ``neighbours``
        ``[d+1, 2·m]`` int64 (see :class:`Lattice`).
    """
    if keys.device.type == "cpu":
        return _hashed_vertices(keys, steps)
    return _sorted_vertices(keys, steps)


def _sorted_vertices(keys: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_number_vertices` by sorting: vertex ``i`` is the i-th smallest distinct key.

    One host read per call: the number of distinct keys (``torch.unique``'s output size).
    """
    d = keys.shape[0] - 1
    vertex_keys, inverse = torch.unique(keys.view(-1), sorted=True, return_inverse=True)
    num_vertices = vertex_keys.numel()
    vertices = inverse.add_(1).view_as(keys)
    ids = torch.arange(1, num_vertices + 1, device=keys.device)
    queries = vertex_keys[None, :] + steps[:, None]  # [d+1, m]
    at = torch.searchsorted(vertex_keys, queries).clamp_(max=num_vertices - 1)
    first = torch.where(vertex_keys.index_select(0, at.view(-1)).view_as(queries) == queries,
                        at + 1, 0)
    second = keys.new_zeros(d + 1, num_vertices + 1)
    second.scatter_(1, first, ids.expand(d + 1, -1))
    return vertices, torch.cat([first, second[:, 1:]], dim=1)


def _hashed_vertices(keys: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_number_vertices` with an open-addressing hash table (:func:`_insert`)."""
    d = keys.shape[0] - 1
    flat_keys = keys.view(-1)
    # Linear probing degrades fast above 2/3 load; every key could be distinct.
    bits = max(4, (3 * flat_keys.numel() // 2).bit_length())
    table, slot_of_key = _insert(flat_keys, bits)
    vertex_slots = (table != _EMPTY).nonzero().squeeze(1)
    num_vertices = vertex_slots.numel()
    ids = torch.arange(1, num_vertices + 1, device=keys.device)
    # Id of the vertex in each slot, 0 in the empty ones (where _find leaves absent keys).
    vertex_of_slot = torch.zeros_like(table)
    vertex_of_slot.scatter_(0, vertex_slots, ids)
    vertices = vertex_of_slot.index_select(0, slot_of_key).view_as(keys)

    vertex_keys = table.index_select(0, vertex_slots)
    found = _find(table, (vertex_keys[None, :] + steps[:, None]).view(-1), bits)
    first = vertex_of_slot.index_select(0, found).view(d + 1, num_vertices)
    # Neighbour 2 of u along an axis is the vertex whose neighbour 1 is u: scatter by u
    # ("missing", 0, lands in column 0, which is dropped).
    second = table.new_zeros(d + 1, num_vertices + 1)
    second.scatter_(1, first, ids.expand(d + 1, -1))
    return vertices, torch.cat([first, second[:, 1:]], dim=1)


def filter_on_lattice(lattice: Lattice, pair_values: Tensor, out: Tensor) -> Tensor:
    """Splat ``[P, n, 2]`` float32 channel pairs, blur along each axis, slice into ``out``.

    Each pair of channels travels as one complex64 element: one gather or scatter-add moves
    both (complex addition is the two float32 additions), while arithmetic runs on float32
    views. Per vertex the splat adds pixels corner after corner, pixel after pixel, as the
    reference does.

    Args:
        lattice: the group's lattice.
        pair_values: ``[P, n, 2]`` float32, each ``[n, 2]`` slice contiguous.
        out: ``[P, n, 2]`` float32 receiving the filtered values, each slice contiguous.

    Returns:
        ``out``.
    """
    d = lattice.weights.shape[0] - 1
    num_vertices = lattice.num_vertices
    vertices = lattice.vertices.view(-1)
    # The weights side by side for both channels of a pair (torch.complex is the fastest way
    # to interleave them): broadcasting only over corners keeps the products vectorised.
    weights = torch.view_as_real(torch.complex(lattice.weights, lattice.weights))  # [d+1, n, 2]
    per_corner = torch.empty_like(weights)

    # Column 0 stays 0: it is what a missing neighbour contributes.
    lattice_values = torch.zeros(
        pair_values.shape[0], num_vertices + 1, dtype=torch.complex64, device=out.device
    )
    for pair, values in zip(lattice_values, pair_values, strict=True):
        torch.mul(weights, values, out=per_corner)
        pair.scatter_add_(0, vertices, per_corner.view(torch.complex64).view(-1))

    # Views are made once, outside the (d+1)·P steps: with ~3·10⁴ vertices per image, making
    # them at every step was a measurable share of the blur.
    buffers = [lattice_values, torch.zeros_like(lattice_values)]
    pair_views = [
        list(zip(buffer, torch.view_as_real(buffer)[:, 1:], strict=True)) for buffer in buffers
    ]
    neighbours = lattice_values.new_empty(2 * num_vertices)
    neighbours_1, neighbours_2 = torch.view_as_real(neighbours).split(num_vertices)
    neighbour_sum = torch.empty_like(neighbours_1)
    for axis_neighbours in lattice.neighbours:
        for (source, source_real), (_, target_real) in zip(*pair_views, strict=True):
            torch.index_select(source, 0, axis_neighbours, out=neighbours)
            torch.add(neighbours_1, neighbours_2, out=neighbour_sum)
            torch.add(source_real, neighbour_sum, alpha=0.5, out=target_real)
        buffers.reverse()
        pair_views.reverse()

    # Slice with the weights times the reference's "magic scaling constant", adding the corners
    # in the reference's order.
    weights.mul_(torch.tensor(1.0 / (1.0 + 2.0 ** (-d)), dtype=torch.float32))
    gathered = lattice_values.new_empty(vertices.numel())
    per_corner = torch.view_as_real(gathered).view(d + 1, -1, 2)
    corners = list(per_corner)
    for pair, pair_out in zip(buffers[0], out, strict=True):
        torch.index_select(pair, 0, vertices, out=gathered)
        per_corner.mul_(weights)
        torch.add(corners[0], corners[1], out=pair_out)
        for corner in corners[2:]:
            pair_out += corner
    return out


def _enclosing_simplices(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Simplex of each of ``[d, n]`` float32 features, in the reference's float32 arithmetic.

    Returns:
        ``nearest_point`` ``[d+1, n]`` float32 (integer-valued: the remainder-0 lattice point
        the simplex hangs from), ``by_rank_index`` ``[(d+1)·n]`` int64 (where each
        coordinate goes in a flattened ``[d+1, n]`` array whose row q holds the coordinates
        ranked d - q: the q-th smallest remainders) and the barycentric ``weights``
        ``[d+1, n]`` float32.
    """
    d, num_points = features.shape
    device = features.device
    # Diagonal of the elevation matrix E, scaled to the filter's expected standard deviation,
    # computed in double and rounded once, like the reference.
    # (struct rounds to float32 in Python: a tensor's float() would be a dispatched host read.)
    inv_std_dev = struct.unpack("f", struct.pack("f", math.sqrt(2.0 / 3.0) * (d + 1)))[0]
    scale = device_constant(
        [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
        dtype=torch.float32,
        device=device,
    )
    # The reference's operation order (elevated[j] = sm - j*cf; sm += cf, for j = d..1) is
    # kept so that the rounding, and so every simplex choice, is the same: the running sums
    # first (elevated[j] = sm before step j), then each minus its j*cf (two roundings, no
    # fused op).
    scaled = features * scale[:, None]
    times_j = scaled * torch.arange(1, d + 1, dtype=torch.float32, device=device)[:, None]
    elevated = features.new_zeros(d + 1, num_points)
    for j in range(d - 1, -1, -1):
        torch.add(elevated[j + 1], scaled[j], out=elevated[j])
    elevated[1:] -= times_j

    inv_d_plus_1 = device_constant(1.0 / (d + 1), dtype=torch.float32, device=device)
    nearest = torch.round(elevated * inv_d_plus_1)  # half to even, as the SSE build
    off_plane = nearest.sum(dim=0)  # integer-valued, exact in any order; |off_plane| <= d/2
    nearest_point = nearest.mul_(d + 1)

    # rank[i]: how many coordinates have a larger remainder, a tie going to the later index:
    # for each pair i < j, rank[i] counts j when delta[i] < delta[j], and rank[j] counts i
    # otherwise, so rank[j] = j + Σ_i>j [delta[j] < delta[i]] - Σ_i<j [delta[i] < delta[j]].
    delta = elevated - nearest_point
    first, second = torch.triu_indices(d + 1, d + 1, 1, device=device)
    smaller = torch.empty(first.numel(), num_points, device=device)
    torch.lt(delta.index_select(0, first), delta.index_select(0, second), out=smaller)
    rank = torch.arange(d + 1, dtype=torch.float32, device=device)[:, None].repeat(1, num_points)
    rank.index_add_(0, first, smaller)
    rank.index_add_(0, second, smaller, alpha=-1)

    # Shift by the distance to the plane and wrap into 0..d, moving the point by d+1 per wrap
    # (ranks stay within -d/2..3d/2, so one wrap at most).
    shifted = rank.add_(off_plane)
    wrapped = shifted - (d + 1) * torch.floor(shifted / (d + 1))  # the remainder, exactly
    nearest_point += wrapped
    nearest_point -= shifted
    # Row q of a by-rank array holds, for each pixel, the coordinate ranked d - q (the q-th
    # smallest remainder); a flat scatter is much faster than one along dim 0 on CPU.
    columns = torch.arange(num_points, device=device)
    by_rank_index = ((d - wrapped.long()) * num_points).add_(columns).view(-1)

    # Barycentric weights (Adams et al. 2010, p.10): weight q is the gap between the remainders
    # ranked d-q and d-q+1; weight 0 wraps around.
    delta = (elevated - nearest_point).mul_(inv_d_plus_1)
    by_rank = torch.empty_like(delta)
    by_rank.view(-1).scatter_(0, by_rank_index, delta.view(-1))
    weights = torch.empty_like(delta)
    torch.sub(by_rank[1:], by_rank[:-1], out=weights[1:])
    weights[0] = by_rank[0] + (1.0 - by_rank[d])
    return nearest_point, by_rank_index, weights


def _corner_keys(
    nearest_point: Tensor, by_rank_index: Tensor, pixels_per_image: int
) -> tuple[Tensor, Tensor]:
    """Packed keys of the d+1 corners of each pixel's simplex.

    Corner r has coordinates ``nearest_point[i] + r``, minus d+1 where ``rank[i] > d - r``
    (the reference's "canonical simplex"); only the first d are stored, the last being implied.
    They are packed in mixed radix with the image index as the top digit and a margin of 2d on
    each side of every coordinate, so that blur neighbours (one more step of at most d) pack
    without carrying into the next digit.

    Args:
        nearest_point: ``[d+1, n]`` float32, integer-valued.
        by_rank_index: ``[(d+1)·n]`` int64, see :func:`_enclosing_simplices`.
        pixels_per_image: the pixels of one image; they follow each other in ``n``.

    Returns:
        ``keys`` ``[d+1, n]`` int64 (>= 0) and the ``[d+1]`` int64 strides of the
        coordinates (0 for the implied one).

    Raises:
        CtfaError: the packed keys would not fit in 63 bits.
    """
    d, num_points = nearest_point.shape[0] - 1, nearest_point.shape[1]
    device = nearest_point.device
    stored = nearest_point[:d].long()
    low, high = torch.aminmax(stored, dim=1)
    low, high = low - 2 * d, high + 2 * d
    # The host needs the packed range only for the overflow check (one read); the strides
    # themselves are computed again on the device from the same integers, so that no
    # host-made tensor is copied (a synchronous copy that would wait for the GPU).
    spans = [hi - lo + 1 for lo, hi in zip(*torch.stack([low, high]).tolist(), strict=True)]
    stride = math.prod(spans)
    num_images = num_points // pixels_per_image
    if stride * num_images >= 2**62:
        raise CtfaError(
            "bilateral lattice: the features span too wide a range to pack the lattice keys; "
            "use larger sigma_rgb / sigma_xy (in grey levels / pixels)"
        )
    # strides[i] = spans[i+1] · … · spans[d-1] (1 for the last), then 0 for the implied one.
    suffix = (high - low + 1).flip(0).cumprod(0).flip(0)  # [d]: spans[i] · … · spans[d-1]
    strides = torch.cat([suffix[1:], suffix.new_ones(1), suffix.new_zeros(1)])
    offset = (low * strides[:d]).sum()
    keys = stored.new_empty(d + 1, num_points)
    base = keys[0]
    torch.sum(stored * strides[:d, None], dim=0, out=base).sub_(offset)
    base.view(num_images, pixels_per_image).add_(
        torch.arange(num_images, device=device)[:, None] * stride
    )
    # moved[r] = sum of the strides of the coordinates ranked above d - r (those shifted by
    # d+1 in corner r + 1).
    stride_by_rank = torch.empty_like(keys)
    stride_by_rank.view(-1).scatter_(0, by_rank_index, strides.repeat_interleave(num_points))
    moved = stride_by_rank[:d].cumsum_(dim=0)
    corner_shift = torch.arange(1, d + 1, device=device)[:, None] * strides.sum()
    torch.add(base, corner_shift - (d + 1) * moved, out=keys[1:])
    return keys, strides


def _slots(keys: Tensor, bits: int) -> Tensor:
    """Home slot of each key in a table of 2**bits slots (top bits of a Fibonacci hash)."""
    slots = keys * _FIBONACCI
    return slots.bitwise_right_shift_(64 - bits).bitwise_and_((1 << bits) - 1)


def _insert(keys: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Insert ``[n]`` int64 keys (>= 0, duplicates allowed) into an open-addressing table.

    The table starts empty, so every key first writes itself to its home slot (when several
    race for a slot, one wins). The others then probe linearly, round by round: an empty slot
    is claimed (again one racer wins), a slot holding the key itself settles it, any other key
    sends it on to the next slot.

    Returns:
        ``table`` ``[2**bits]`` (keys, or ``_EMPTY``) and ``[n]`` the slot holding each key.
    """
    mask = (1 << bits) - 1
    table = torch.full((1 << bits,), _EMPTY, dtype=torch.int64, device=keys.device)
    slot_of_key = _slots(keys, bits)
    table.scatter_(0, slot_of_key, keys)
    pending = (table.index_select(0, slot_of_key) != keys).nonzero().squeeze(1)
    pending_keys = keys.index_select(0, pending)
    pending_slots = slot_of_key.index_select(0, pending)
    while pending.numel():
        pending_slots.add_(1).bitwise_and_(mask)
        occupant = table.index_select(0, pending_slots)
        # Writing the occupant back leaves a taken slot as it is.
        claim = torch.where(occupant == _EMPTY, pending_keys, occupant)
        table.scatter_(0, pending_slots, claim)
        slot_of_key.scatter_(0, pending, pending_slots)  # final for the settled ones
        moving = (table.index_select(0, pending_slots) != pending_keys).nonzero().squeeze(1)
        pending = pending.index_select(0, moving)
        pending_keys = pending_keys.index_select(0, moving)
        pending_slots = pending_slots.index_select(0, moving)
    return table, slot_of_key


def _find(table: Tensor, queries: Tensor, bits: int) -> Tensor:
    """Slot of each ``[n]`` int64 query in ``table``: the slot holding it or, where it is
    absent, the empty slot that ends its probe.
    """
    mask = (1 << bits) - 1
    found = _slots(queries, bits)
    occupant = table.index_select(0, found)
    pending = ((occupant != queries) & (occupant != _EMPTY)).nonzero().squeeze(1)
    pending_keys = queries.index_select(0, pending)
    pending_slots = found.index_select(0, pending)
    while pending.numel():
        pending_slots.add_(1).bitwise_and_(mask)
        found.scatter_(0, pending, pending_slots)  # final for those that stop here
        occupant = table.index_select(0, pending_slots)
        moving = ((occupant != pending_keys) & (occupant != _EMPTY)).nonzero().squeeze(1)
        pending = pending.index_select(0, moving)
        pending_keys = pending_keys.index_select(0, moving)
        pending_slots = pending_slots.index_select(0, moving)
    return found
