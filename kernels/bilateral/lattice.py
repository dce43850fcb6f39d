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
~165 ms single-threaded on the 2-core CI box for the 1.2 M corner keys of an 8×160×160 batch,
three times this module's whole hash-table build.) Vertex numbering differs from the
reference's, which only reorders the lattice and cannot change any sum.

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

Speed, batch 8 × 6 channels × 160×160 (``kernels.bilateral.bench`` inputs), measured on the
shared 2-core CI box while other jobs kept its load average near 6: about 200 ms of CPU time
single-threaded for the smooth synthetic image (simplices ~25 ms, keys ~15, hash tables ~85,
splat/blur/slice ~70), about 390 ms for uniform random colours (2.2× more lattice vertices).
Under that load two OpenMP threads were slower, not faster (barrier waits); on a quiet machine
the elementwise and gather steps parallelise.


So the lattice under-weighs the Gaussian by a data- and size-dependent factor of about 0.4-0.6
and, once that factor is taken out, matches its shape to 7-17 % (relative L2). The σ convention
is the right one: rescaling both bandwidths of the exact sum by 0.8 or 1.2 fits the lattice
worse (8 % → 12-15 % after scaling, smooth 40×40).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ctfa_cli.errors import CtfaError
from kernels.bilateral.reference import pixel_features

FEATURE_DIM = 5  # d: x, y, R, G, B
_EMPTY = -1  # marks a free slot of the hash table (packed keys are >= 0)
# Multiplicative (Fibonacci) hashing: 2^64 / golden ratio, as a signed int64.
_FIBONACCI = 0x9E3779B97F4A7C15 - (1 << 64)
# Keys per hash table on CPU: the table (int64, load <= 2/3) and the vertices of one group of
# images then stay in the caches.
_CPU_KEYS_PER_TABLE = 1 << 18


@dataclass(frozen=True)
class Lattice:
    """A permutohedral lattice built over the pixels of G groups of n pixels (whole images).

    Each group has its own hash table. Vertex ids run from 1 to M, group after group; id 0 is
    a vertex whose value is always 0, what a missing neighbour contributes.

    Attributes:
        vertices: ``[G, d+1, n]`` int64, the vertex at corner r of each pixel's simplex.
        weights: ``[G, d+1, n]`` float32 barycentric weights (they sum to 1 per pixel).
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
    groups = batch // per_group
    features = pixel_features(images.float(), sigma_rgb, sigma_xy)  # [B, 5, N]
    features = features.view(groups, per_group, FEATURE_DIM, num_pixels).transpose(1, 2)
    lattice = build_lattice(features.reshape(groups, FEATURE_DIM, -1), per_group)
    grouped_values = values.float().view(groups, per_group, channels, num_pixels)
    grouped_values = grouped_values.permute(2, 0, 1, 3).reshape(channels, groups, -1).contiguous()
    filtered = filter_on_lattice(lattice, grouped_values)  # [K, G, n]
    filtered = filtered.view(channels, groups, per_group, num_pixels).permute(1, 2, 0, 3)
    return filtered.reshape(batch, channels, height, width)


def _images_per_group(device: torch.device, batch: int, pixels_per_image: int) -> int:
    """How many images share a hash table: a divisor of ``batch``.

    On CPU, as many as fit in about :data:`_CPU_KEYS_PER_TABLE` keys; on GPU, the whole batch
    (one table saves kernel launches).
    """
    if device.type != "cpu":
        return batch
    limit = max(1, _CPU_KEYS_PER_TABLE // ((FEATURE_DIM + 1) * pixels_per_image))
    return max(size for size in range(1, min(batch, limit) + 1) if batch % size == 0)


def build_lattice(features: Tensor, images_per_group: int) -> Lattice:
    """Embed ``[G, d, n]`` float32 features (G groups of ``images_per_group`` whole images).

    Images never share a vertex: within a group the image index is part of every key.
    """
    groups, d, num_pixels = features.shape
    nearest_point, rank, weights = _enclosing_simplices(features)
    image_index = torch.arange(images_per_group, device=features.device).repeat_interleave(
        num_pixels // images_per_group
    )
    keys, strides = _corner_keys(nearest_point, rank, image_index)  # [G, d+1, n], [d+1]
    # Along axis j, neighbour 1 is key - 1 on every coordinate except j, which gets + d, and
    # neighbour 2 the opposite (for j = d, the implicit coordinate, every stored one gets - 1).
    # Packing is linear, so neighbour 1 is the packed key plus a constant step.
    steps = (d + 1) * strides - strides.sum()  # [d+1]

    vertices = torch.empty_like(keys)
    first, second, num_vertices = [], [], 0
    for group in range(groups):
        group_first, group_second = _hash_group(
            keys[group], steps, num_vertices, out=vertices[group]
        )
        first.append(group_first)
        second.append(group_second)
        num_vertices += group_first.shape[1]
    return Lattice(
        vertices=vertices,
        weights=weights,
        neighbours=torch.cat(first + second, dim=1),
        num_vertices=num_vertices,
    )


def _hash_group(keys: Tensor, steps: Tensor, offset: int, out: Tensor) -> tuple[Tensor, Tensor]:
    """Number the distinct ``[d+1, n]`` keys of one group and find their blur neighbours.

    Vertex ids are ``offset + 1 ..= offset + m``; ``out`` (``[d+1, n]`` int64) receives the id
    of every key.

    Returns:
        Neighbours 1 and 2 of the group's vertices along each axis, ``[d+1, m]`` int64 each
        (0 where missing).
    """
    d = keys.shape[0] - 1
    flat_keys = keys.reshape(-1)
    # Linear probing degrades fast above 2/3 load; every key could be distinct.
    bits = max(4, (3 * flat_keys.numel() // 2).bit_length())
    table, slot_of_key = _insert(flat_keys, bits)
    occupied = table != _EMPTY
    vertex_keys = table[occupied]
    num_vertices = vertex_keys.numel()
    # Id of the vertex in each slot, plus a last entry 0 for "not found" (_find's 2**bits).
    vertex_of_slot = table.new_zeros(table.numel() + 1)
    torch.cumsum(occupied, 0, out=vertex_of_slot[:-1]).add_(offset)
    torch.index_select(vertex_of_slot, 0, slot_of_key, out=out.view(-1))

    found = _find(table, (vertex_keys[None, :] + steps[:, None]).reshape(-1), bits)
    first = vertex_of_slot.index_select(0, found).view(d + 1, num_vertices)
    # Neighbour 2 of u along an axis is the vertex whose neighbour 1 is u. Scatter by u's
    # position in the group (1..m; "missing" lands in column 0, which is dropped).
    position = (first - offset).clamp_(min=0)
    ids = torch.arange(offset + 1, offset + num_vertices + 1, device=keys.device)
    second = table.new_zeros(d + 1, num_vertices + 1)
    second.scatter_(1, position, ids.expand(d + 1, -1))
    return first, second[:, 1:]


def filter_on_lattice(lattice: Lattice, pixel_values: Tensor) -> Tensor:
    """Splat ``[K, G, n]`` float32 values, blur along each axis, slice back to ``[K, G, n]``.

    Channels go one at a time through buffers reused across them: on CPU this was measured
    faster than batched broadcasting and indexing, which allocate K-times larger temporaries.
    """
    d = lattice.weights.shape[1] - 1
    num_vertices, channels = lattice.num_vertices, pixel_values.shape[0]
    vertices = lattice.vertices.view(-1)
    per_corner = torch.empty_like(lattice.weights)  # [G, d+1, n]

    # Column 0 stays 0: it is what a missing neighbour contributes.
    lattice_values = pixel_values.new_zeros(channels, num_vertices + 1)
    for k in range(channels):
        torch.mul(lattice.weights, pixel_values[k][:, None, :], out=per_corner)
        lattice_values[k].index_add_(0, vertices, per_corner.view(-1))

    blurred = torch.zeros_like(lattice_values)
    neighbours = pixel_values.new_empty(2 * num_vertices)
    neighbour_sum = pixel_values.new_empty(num_vertices)
    for axis in range(d + 1):
        for k in range(channels):
            torch.index_select(lattice_values[k], 0, lattice.neighbours[axis], out=neighbours)
            torch.add(neighbours[:num_vertices], neighbours[num_vertices:], out=neighbour_sum)
            torch.add(lattice_values[k, 1:], neighbour_sum, alpha=0.5, out=blurred[k, 1:])
        lattice_values, blurred = blurred, lattice_values

    # Slice with the weights times the reference's "magic scaling constant", adding the corners
    # in the reference's order.
    alpha = torch.tensor(1.0 / (1.0 + 2.0 ** (-d)), dtype=torch.float32)
    slice_weights = lattice.weights * alpha
    out = torch.empty_like(pixel_values)
    for k in range(channels):
        torch.index_select(lattice_values[k], 0, vertices, out=per_corner.view(-1))
        per_corner.mul_(slice_weights)
        torch.add(per_corner[:, 0], per_corner[:, 1], out=out[k])
        for corner in range(2, d + 1):
            out[k] += per_corner[:, corner]
    return out


def _enclosing_simplices(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Simplex of each of ``[G, d, n]`` float32 features, in the reference's float32 arithmetic.

    Returns:
        ``nearest_point`` ``[G, d+1, n]`` float32 (integer-valued: the remainder-0 lattice point
        the simplex hangs from), ``rank`` ``[G, d+1, n]`` int64 (a permutation of 0..d per
        pixel) and the barycentric ``weights`` ``[G, d+1, n]`` float32.
    """
    groups, d, num_points = features.shape
    device = features.device
    # Diagonal of the elevation matrix E, scaled to the filter's expected standard deviation,
    # computed in double and rounded once, like the reference.
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    scale = torch.tensor(
        [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
        dtype=torch.float32,
        device=device,
    )
    # The reference's operation order (elevated[j] = sm - j*cf; sm += cf, for j = d..1) is
    # kept so that the rounding, and so every simplex choice, is the same.
    scaled = features * scale[:, None]
    elevated = features.new_empty(groups, d + 1, num_points)
    running_sum = torch.zeros_like(features[:, 0])
    for j in range(d, 0, -1):
        elevated[:, j] = running_sum - j * scaled[:, j - 1]  # two roundings, no fused op
        running_sum += scaled[:, j - 1]
    elevated[:, 0] = running_sum

    inv_d_plus_1 = torch.tensor(1.0 / (d + 1), dtype=torch.float32, device=device)
    nearest = torch.round(elevated * inv_d_plus_1)  # half to even, as the SSE build
    off_plane = nearest.sum(dim=1)  # integer-valued, exact in any order; |off_plane| <= d/2
    nearest_point = nearest.mul_(d + 1)

    # rank[i]: how many coordinates have a larger remainder, a tie going to the later index.
    delta = elevated - nearest_point
    rank = torch.zeros(groups, d + 1, num_points, dtype=torch.uint8, device=device)
    for i in range(d + 1):
        for j in range(i + 1, d + 1):
            smaller = delta[:, i] < delta[:, j]
            rank[:, i] += smaller.view(torch.uint8)
            rank[:, j] += (~smaller).view(torch.uint8)

    # Shift by the distance to the plane and wrap into 0..d, moving the point by d+1 per wrap
    # (ranks stay within -d/2..3d/2, so one wrap at most).
    shifted = rank.float() + off_plane[:, None]
    wrapped = torch.remainder(shifted, d + 1)
    nearest_point += wrapped
    nearest_point -= shifted
    rank = wrapped.long()

    # Barycentric weights (Adams et al. 2010, p.10): weight q is the gap between the remainders
    # ranked d-q and d-q+1; weight 0 wraps around.
    delta = (elevated - nearest_point).mul_(inv_d_plus_1)
    by_rank = torch.zeros_like(delta).scatter_(1, rank, delta).flip(1)  # [:, q] = rank d-q
    weights = torch.empty_like(delta)
    torch.sub(by_rank[:, 1:], by_rank[:, :-1], out=weights[:, 1:])
    weights[:, 0] = by_rank[:, 0] + (1.0 - by_rank[:, d])
    return nearest_point, rank, weights


def _corner_keys(nearest_point: Tensor, rank: Tensor, image_index: Tensor) -> tuple[Tensor, Tensor]:
    """Packed keys of the d+1 corners of each pixel's simplex.

    Corner r has coordinates ``nearest_point[i] + r``, minus d+1 where ``rank[i] > d - r``
    (the reference's "canonical simplex"); only the first d are stored, the last being implied.
    They are packed in mixed radix with the image index as the top digit and a margin of 2d on
    each side of every coordinate, so that blur neighbours (one more step of at most d) pack
    without carrying into the next digit.

    Args:
        nearest_point: ``[G, d+1, n]`` float32, integer-valued.
        rank: ``[G, d+1, n]`` int64.
        image_index: ``[n]`` int64, the image of each pixel within its group.

    Returns:
        ``keys`` ``[G, d+1, n]`` int64 (>= 0) and the ``[d+1]`` int64 strides of the
        coordinates (0 for the implied one).

    Raises:
        CtfaError: the packed keys would not fit in 63 bits.
    """
    d = rank.shape[1] - 1
    stored = nearest_point[:, :d]
    extent = torch.stack([stored.amin(dim=(0, 2)), stored.amax(dim=(0, 2))])
    low, high = (extent.long() + torch.tensor([[-2 * d], [2 * d]], device=rank.device)).tolist()
    strides, stride = [], 1
    for lo, hi in zip(reversed(low), reversed(high), strict=True):
        strides.append(stride)
        stride *= hi - lo + 1
    strides = strides[::-1]
    num_images = int(image_index[-1]) + 1
    if stride * num_images >= 2**62:
        raise CtfaError(
            "bilateral lattice: the features span too wide a range to pack the lattice keys; "
            "use larger sigma_rgb / sigma_xy (in grey levels / pixels)"
        )
    base = image_index * stride - sum(lo * st for lo, st in zip(low, strides, strict=True))
    base = base.expand(rank.shape[0], -1).clone()
    for i in range(d):
        base.add_(nearest_point[:, i].long(), alpha=strides[i])
    strides = torch.tensor(strides + [0], dtype=torch.int64, device=rank.device)
    # moved[r] = sum of the strides of the coordinates ranked above d - r (those shifted by d+1).
    stride_by_rank = torch.zeros_like(rank).scatter_(
        1, rank, strides[None, :, None].expand_as(rank)
    )
    moved = stride_by_rank.flip(1).cumsum_(dim=1)
    keys = torch.empty_like(rank)
    keys[:, 0] = base
    corner_shift = strides.sum()
    for corner in range(1, d + 1):
        torch.sub(base, moved[:, corner - 1], alpha=d + 1, out=keys[:, corner])
        keys[:, corner] += corner * corner_shift
    return keys, strides


def _slots(keys: Tensor, bits: int) -> Tensor:
    """Home slot of each key in a table of 2**bits slots (top bits of a Fibonacci hash)."""
    return ((keys * _FIBONACCI) >> (64 - bits)) & ((1 << bits) - 1)


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
    table.index_copy_(0, slot_of_key, keys)
    pending = (table.index_select(0, slot_of_key) != keys).nonzero().squeeze(1)
    pending_keys, pending_slots = keys[pending], slot_of_key[pending]
    while pending.numel():
        pending_slots = (pending_slots + 1) & mask
        free = (table.index_select(0, pending_slots) == _EMPTY).nonzero().squeeze(1)
        table.index_copy_(0, pending_slots[free], pending_keys[free])
        settled = table.index_select(0, pending_slots) == pending_keys
        slot_of_key[pending[settled]] = pending_slots[settled]
        moving = (~settled).nonzero().squeeze(1)
        pending, pending_keys, pending_slots = (
            pending[moving],
            pending_keys[moving],
            pending_slots[moving],
        )
    return table, slot_of_key


def _find(table: Tensor, queries: Tensor, bits: int) -> Tensor:
    """Slot of each ``[n]`` int64 query in ``table``, or ``2**bits`` where it is absent."""
    mask = (1 << bits) - 1
    home = _slots(queries, bits)
    occupant = table.index_select(0, home)
    found = torch.where(occupant == queries, home, 1 << bits)
    pending = ((occupant != queries) & (occupant != _EMPTY)).nonzero().squeeze(1)
    pending_keys, pending_slots = queries[pending], home[pending]
    while pending.numel():
        pending_slots = (pending_slots + 1) & mask
        occupant = table.index_select(0, pending_slots)
        hit = occupant == pending_keys
        found[pending[hit]] = pending_slots[hit]
        moving = (~hit & (occupant != _EMPTY)).nonzero().squeeze(1)
        pending, pending_keys, pending_slots = (
            pending[moving],
            pending_keys[moving],
            pending_slots[moving],
        )
    return found
