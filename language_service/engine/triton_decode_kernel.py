"""The Triton kernel of `triton_decode.py`, alone in a module that imports Triton at the top
(Triton resolves the names a kernel uses among its module's globals), imported only when the
Triton decode runs: the engine itself needs no Triton."""

import triton
import triton.language as tl


@triton.jit
def paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, lengths_ptr, acc_ptr, ml_ptr,
    stride_q_row, stride_q_head, stride_slot, stride_kv_head, stride_table_row,
    scale, keys_per_split,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, NUM_SPLITS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    IEEE: tl.constexpr,
):
    row, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(lengths_ptr + row)
    g = tl.arange(0, GROUP_PAD)  # query heads of this group (padding past GROUP)
    d = tl.arange(0, DIM_PAD)
    d_ok = d < HEAD_DIM
    q_rows = q_ptr + row * stride_q_row + (kv_head * GROUP + g)[:, None] * stride_q_head + d[None, :]
    q = tl.load(q_rows, mask=(g < GROUP)[:, None] & d_ok[None, :], other=0.0)  # [G, D]
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, length)
    for tile in range(start, end, TILE):
        pos = tile + tl.arange(0, TILE)  # the row's key positions
        valid = pos < end
        block = tl.load(table_ptr + row * stride_table_row + pos // BLOCK_SIZE, mask=valid, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_offsets = slot[:, None] * stride_slot + kv_head * stride_kv_head + d[None, :]  # [TILE, D]
        kv_mask = valid[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if IEEE:  # fp32 stays fp32 (a GPU's default would round it to tf32)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(valid[None, :], scores * scale, float("-inf"))  # [G, TILE] fp32
        m_new = tl.maximum(m, tl.max(scores, 1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        m = m_new
    part = (row * NUM_KV_HEADS + kv_head) * NUM_SPLITS + split  # [rows, kv_heads, splits, ...] row-major
    tl.store(acc_ptr + part * GROUP_PAD * DIM_PAD + g[:, None] * DIM_PAD + d[None, :], acc)
    tl.store(ml_ptr + part * 2 * GROUP_PAD + g, m)
    tl.store(ml_ptr + part * 2 * GROUP_PAD + GROUP_PAD + g, l_sum)
