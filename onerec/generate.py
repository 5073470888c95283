"""Session generation: batched, KV-cached, trie-constrained beam search.

:class:`SessionGenerator` is an inference snapshot of a trained :class:`OneRec`: it reads
dense padded histories (no torchrec at inference, so it can be TorchScript-compiled and
served), encodes them once, then walks ``m`` items × ``L`` codes: one decoder step per code
(an item's last code enters with the next item's BOS), the beams of a user sharing its
encoder memory. At every step each beam expands only into the children of its trie node,
so every emitted item exists; at an item's last code, items already in the beam's session
(or excluded by the caller) are removed. Scores are sums of the model's log-probabilities.

:func:`reference_beam_search` is the plain version: one user at a time, Python lists, the
whole decoder re-run on the prefix at every step (no cache). Tests check both agree.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.modules.attention import key_padding_mask
from onerec.trie import SemanticIdTrie, banned_below



class SessionGenerator(nn.Module):
    """Args:
        model: a trained :class:`onerec.model.OneRec` (its encoder, decoder and position
            tables are shared, not copied; its embedding tables and heads are copied
            into flat tensors, so build a new generator after further training).
        trie: the semantic-ID trie of the model's catalogue.
        item_codes: ``[num_items, L]`` semantic IDs.
    """

    def __init__(self, model: nn.Module, trie: SemanticIdTrie, item_codes: Tensor) -> None:
        super().__init__()
        sizes: List[int] = list(model.codebook_sizes)
        self.num_levels = len(sizes)
        self.codebook_sizes = sizes
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.code_offsets: List[int] = offsets
        self.max_children: List[int] = list(trie.max_children)
        self.history_item_embedding: bool = bool(model.config.history_item_embedding)
        self.max_history: int = int(model.config.max_history)
        self.num_user_features: int = len(model.user_feature_names)
        self.num_items: int = int(item_codes.shape[0])
        self.session_length: int = int(model.session_length)
        self.d_model: int = int(model.config.d_model)

        tables = model.embeddings
        weights = [tables.table(f"code_{level}").weight.detach() for level in range(self.num_levels)]
        self.register_buffer("code_embedding", torch.cat(weights, 0).clone())
        item_weight = tables.table("item").weight.detach().clone() if self.history_item_embedding else torch.zeros(1, self.d_model)
        self.register_buffer("item_embedding", item_weight)
        uf = [tables.table(f"uf_{n}").weight.detach() for n in model.user_feature_names]
        self.user_feature_offsets: List[int] = [0]
        for w in uf[:-1]:
            self.user_feature_offsets.append(self.user_feature_offsets[-1] + int(w.shape[0]))
        self.register_buffer("user_feature_embedding", torch.cat(uf, 0).clone() if uf else torch.zeros(1, self.d_model))
        self.register_buffer("head_weight", torch.cat([h.weight.detach() for h in model.heads], 0).clone())
        self.register_buffer("head_bias", torch.cat([h.bias.detach() for h in model.heads], 0).clone())
        self.register_buffer("user_token", model.user_token.detach().clone())
        self.register_buffer("bos", model.bos.detach().clone())
        self.register_buffer("item_codes", item_codes.long().clone())
        self.register_buffer("node_start", trie.node_start.clone())
        self.register_buffer("node_count", trie.node_count.clone())
        self.register_buffer("edge_code", trie.edge_code.clone())
        self.register_buffer("edge_next", trie.edge_next.clone())
        self.register_buffer("item_keys", trie.item_keys.clone())
        self.register_buffer("item_of_key", trie.item_of_key.clone())
        self.register_buffer("radix", trie.radix.clone())
        self.register_buffer("item_nodes", trie.item_nodes.clone())
        self.register_buffer("item_edges", trie.item_edges.clone())
        self.register_buffer("subtree_size", trie.subtree_size.clone())
        self.history_position = model.history_position
        self.session_position = model.session_position
        self.encoder = model.encoder
        self.decoder = model.decoder

    @classmethod
    def snapshot(cls, model: nn.Module, trie: SemanticIdTrie, item_codes: Tensor) -> "SessionGenerator":
        """A generator that shares nothing with ``model`` (for export or a frozen reference)."""
        return cls(copy.deepcopy(model), trie, item_codes)

    # ----------------------------------------------------------------- encoder
    def encode(self, history: Tensor, lengths: Tensor, user_features: Tensor) -> Tuple[Tensor, Tensor]:
        """Args:
            history: ``[B, T]`` item indices, oldest first, right-padded (any value).
            lengths: ``[B]`` real items per row (0 allowed: the user token alone).
            user_features: ``[B, F]`` categorical user features (0 = unknown), F may be 0.

        Returns:
            memory ``[B, 1 + T', D]`` and its key mask ``[B, 1, 1, 1 + T']`` where T' =
            min(T, max_history); longer histories keep their most recent items.
        """
        b, t = history.shape
        if t > self.max_history:
            # Keep each row's last max_history items, still left-aligned.
            start = (lengths - self.max_history).clamp(min=0)
            index = start[:, None] + torch.arange(self.max_history, device=history.device)[None, :]
            history = history.gather(1, index.clamp(max=t - 1))
            lengths = lengths.clamp(max=self.max_history)
            t = self.max_history
        valid = torch.arange(t, device=history.device)[None, :] < lengths[:, None]
        items = torch.where(valid, history, torch.zeros_like(history)).clamp(0, self.num_items - 1)
        codes = self.item_codes[items]  # (B, T, L)
        offsets = torch.tensor(self.code_offsets, device=history.device)
        x = F.embedding(codes + offsets, self.code_embedding).sum(2)  # (B, T, D)
        if self.history_item_embedding:
            x = x + F.embedding(items, self.item_embedding)
        x = x * valid[:, :, None].to(x.dtype)
        recency = (lengths[:, None] - 1 - torch.arange(t, device=history.device)[None, :]).clamp(min=0)
        x = x + self.history_position(recency)
        user = self.user_token.expand(b, self.d_model)
        if self.num_user_features > 0:
            feature_offsets = torch.tensor(self.user_feature_offsets, device=history.device)
            user = user + F.embedding(user_features + feature_offsets, self.user_feature_embedding).sum(1)
        x = torch.cat([user[:, None, :], x], dim=1)
        mask = key_padding_mask(lengths + 1, t + 1)
        return self.encoder(x, mask), mask

    # ----------------------------------------------------------------- helpers
    def level_log_probs(self, hidden: Tensor, level: int) -> Tensor:
        """``hidden [N, D]`` → log-probabilities over level ``level``'s codes ``[N, K_l]``."""
        start = self.code_offsets[level]
        end = start + self.codebook_sizes[level]
        logits = F.linear(hidden, self.head_weight[start:end], self.head_bias[start:end])
        return torch.log_softmax(logits.float(), dim=-1)

    def token(self, codes: Tensor, level: int, position: int) -> Tensor:
        """Decoder input for ``codes [N]`` of ``level`` at session ``position``: ``[N, 1, D]``."""
        x = F.embedding(codes + self.code_offsets[level], self.code_embedding)
        return (x + self.session_position.weight[position])[:, None, :]

    def bos_token(self, n: int, position: int) -> Tensor:
        return (self.bos + self.session_position.weight[position]).expand(n, self.d_model)[:, None, :]

    def item_of_codes(self, codes: Tensor) -> Tensor:
        """``codes [..., L]`` → item index, or -1 where the tuple is no item."""
        keys = (codes * self.radix).sum(-1)
        pos = torch.searchsorted(self.item_keys, keys).clamp(max=self.item_keys.numel() - 1)
        found = self.item_keys[pos] == keys
        return torch.where(found, self.item_of_key[pos], torch.full_like(keys, -1))

    # ----------------------------------------------------------------- search
    @torch.jit.export
    def generate(
        self,
        history: Tensor,
        lengths: Tensor,
        user_features: Tensor,
        num_items: int,
        beam_size: int,
        exclude: Optional[Tensor] = None,
        constrained: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        """Beam search for sessions of ``num_items`` items.

        Args:
            history / lengths / user_features: see :meth:`encode`.
            num_items: m, items per session (at most the model's session length).
            beam_size: beams kept per user.
            exclude: optional ``[B, E]`` item indices never to emit (-1 = padding; no
                duplicates).
            constrained: expand only real prefixes (False: any code, for ablations; then
                items may be -1, i.e. illegal).

        Returns:
            ``items [B, beam, m]`` (best beam first; -1 where fewer legal sessions
            exist) and ``scores [B, beam]`` (sum of log-probabilities; -inf for those).
        """
        if num_items < 1 or num_items > self.session_length:
            raise ValueError("num_items must be between 1 and the model's session length")
        device = history.device
        b = history.shape[0]
        k = beam_size
        n = b * k
        memory, mask = self.encode(history, lengths, user_features)
        # One memory per user, shared by its k beams (rows b*k .. b*k + k - 1): never repeated.
        memory_keys, memory_values = self.decoder.memory_kv(memory)
        # The first step feeds the same BOS to every beam of a user: it runs once per user
        # (b rows, not b * k) and its cache rows are copied to the beams when they split.
        self_keys, self_values = self.decoder.empty_cache(b, device, memory.dtype)
        rows_per_user = 1
        # The cache row each beam continues, applied inside the next decoder step (where the
        # reorder and the append are one copy once compiled); None before the first choice.
        cache_rows: Optional[Tensor] = None

        # Only beam 0 is alive at the start, so the first expansion has no duplicates.
        scores = torch.full((b, k), -float("inf"), device=device)
        scores[:, 0] = 0.0
        scores = scores.view(n)
        items = torch.full((n, num_items), -1, dtype=torch.long, device=device)
        if exclude is None:
            excluded_outside = torch.full((n, 0), -1, dtype=torch.long, device=device)
        else:
            excluded_outside = exclude.long().repeat_interleave(k, dim=0)
        codes = torch.zeros((n, self.num_levels), dtype=torch.long, device=device)
        node = torch.zeros(n, dtype=torch.long, device=device)
        batch_base = (torch.arange(b, device=device) * k)[:, None]
        position = 0
        x = self.bos_token(b, position)
        for j in range(num_items):
            for level in range(self.num_levels):
                hidden, self_keys, self_values = self.decoder.step(
                    x, self_keys, self_values, memory_keys, memory_values, mask, rows_per_user, True, cache_rows
                )
                log_probs = self.level_log_probs(hidden[:, -1], level)  # (N, K_l)
                if rows_per_user != k:
                    log_probs = log_probs.repeat_interleave(k, dim=0)  # the first step: (B, K_0) → (N, K_0)
                if constrained:
                    width = self.max_children[level]
                    arange = torch.arange(width, device=device)[None, :]
                    # node -1: a beam that took a dead slot (fewer live candidates than beams);
                    # it has no children, so it stays dead.
                    known = node.clamp(min=0)
                    children = torch.where(node >= 0, self.node_count[known], torch.zeros_like(known))
                    valid = arange < children[:, None]
                    edge = (self.node_start[known][:, None] + arange).clamp(max=self.edge_code.numel() - 1)
                    # Slots past a node's own children read its neighbours' edges, which may
                    # belong to the next level (other code range, node ids or items): blank them.
                    cand_code = torch.where(valid, self.edge_code[edge], torch.zeros_like(edge))
                    cand_next = torch.where(valid, self.edge_next[edge], torch.full_like(edge, -1))
                else:
                    width = self.codebook_sizes[level]
                    cand_code = torch.arange(width, device=device)[None, :].expand(n, width)
                    cand_next = torch.zeros_like(cand_code)
                    valid = torch.ones_like(cand_code, dtype=torch.bool)
                cand_lp = log_probs.gather(1, cand_code)
                last = level == self.num_levels - 1
                if last and not constrained:
                    full = torch.cat([codes[:, :level, None].expand(n, level, width), cand_code[:, None, :]], 1)
                    cand_next = self.item_of_codes(full.transpose(1, 2))
                # Items this beam may not emit: its session so far and the caller's list.
                banned = torch.cat([items[:, :j], excluded_outside], dim=1)  # (N, X)
                if banned.shape[1] > 0:
                    if constrained:
                        # A candidate is closed when every item below it is banned (at the
                        # last level: when it is a banned item).
                        below = banned_below(banned, node, level, width, self.item_nodes, self.item_edges, self.node_start)
                        if last:
                            valid = valid & (below == 0)
                        else:
                            valid = valid & (below < self.subtree_size[cand_next.clamp(min=0)])
                    elif last:
                        hits = (cand_next[:, :, None] == banned[:, None, :]) & (banned[:, None, :] >= 0)
                        valid = valid & ~hits.any(-1)
                cand_lp = torch.where(valid, cand_lp, torch.full_like(cand_lp, -float("inf")))
                total = (scores[:, None] + cand_lp).view(b, k * width)
                top_scores, top_index = torch.topk(total, k, dim=1)
                parent = (batch_base + top_index // width).view(n)
                choice = (top_index % width).view(n)
                chosen_code = cand_code[parent, choice]
                chosen_next = cand_next[parent, choice]
                scores = top_scores.view(n)
                # Cache rows of the chosen parents (after the first step: of their users).
                cache_rows = parent if rows_per_user == k else torch.div(parent, k, rounding_mode="floor")
                rows_per_user = k
                items = items.index_select(0, parent)
                codes = codes.index_select(0, parent)
                codes[:, level] = chosen_code
                position += 1
                x = self.token(chosen_code, level, position)
                if level == self.num_levels - 1:
                    items[:, j] = chosen_next
                    node = torch.zeros_like(node)
                else:
                    node = chosen_next
            if j + 1 < num_items:
                # The item's last code (its output predicts nothing) and the next BOS go in
                # together: one decoder step of two tokens instead of two steps.
                position += 1
                x = torch.cat([x, self.bos_token(n, position)], dim=1)  # (N, 2, D)
        dead = torch.isinf(scores)
        items = torch.where(dead[:, None], torch.full_like(items, -1), items)
        return items.view(b, k, num_items), scores.view(b, k)

    def forward(self, history: Tensor, lengths: Tensor, user_features: Tensor, num_items: int, beam_size: int) -> Tuple[Tensor, Tensor]:
        return self.generate(history, lengths, user_features, num_items, beam_size, None, True)


def reference_beam_search(
    model: nn.Module,
    trie: SemanticIdTrie,
    item_codes: Tensor,
    history: List[int],
    num_items: int,
    beam_size: int,
    user_features: Optional[List[int]] = None,
) -> List[Tuple[float, List[int]]]:
    """The plain beam search for one user: no batching, no KV cache, a Python trie walk.

    Re-runs the model's teacher-forced decoder on the whole prefix at every step.

    Returns:
        up to ``beam_size`` ``(score, items)`` pairs, best first.
    """
    from onerec.data import BatchBuilder

    model.eval()
    codes_np = item_codes.numpy()
    builder = BatchBuilder(codes_np, model.config.history_item_embedding, model.config.user_embedding_buckets)
    if user_features:
        builder = BatchBuilder(
            codes_np, model.config.history_item_embedding, model.config.user_embedding_buckets,
            torch.tensor([user_features]).numpy(), model.user_feature_names,
        )
    hist = torch.tensor(history[-model.config.max_history :], dtype=torch.long)
    user = torch.zeros(1, dtype=torch.long)
    # The batch needs a target to build; its codes are not used by encode().
    batch = builder.build(hist, torch.tensor([hist.numel()]), user, torch.zeros(1, model.session_length, dtype=torch.long))
    levels = len(model.codebook_sizes)
    items_below: dict[tuple[int, ...], set[int]] = {}
    for item, row in enumerate(codes_np.tolist()):
        for depth in range(1, levels + 1):
            items_below.setdefault(tuple(row[:depth]), set()).add(item)
    with torch.no_grad():
        memory, mask = model.encode(batch)

        def next_log_probs(prefix_codes: List[List[int]], partial: List[int]) -> Tensor:
            """Log-probs of the next code after finished items ``prefix_codes`` + ``partial``."""
            tokens = [model.bos]
            for item in prefix_codes:
                tokens += [model.embeddings.table(f"code_{l}").weight[c] for l, c in enumerate(item)]
                tokens.append(model.bos)
            tokens += [model.embeddings.table(f"code_{l}").weight[c] for l, c in enumerate(partial)]
            x = torch.stack(tokens)[None]
            x = x + model.session_position.weight[: x.shape[1]][None]
            hidden, _ = model.decoder(x, memory, mask)
            logits = model.heads[len(partial)](hidden[0, -1])
            return torch.log_softmax(logits.float(), -1)

        # A beam: (score, finished items' codes, finished items, partial codes of the current item)
        beams: List[Tuple[float, List[List[int]], List[int], List[int]]] = [(0.0, [], [], [])]
        for _ in range(num_items):
            for level in range(levels):
                candidates = []
                for score, done_codes, done_items, partial in beams:
                    log_probs = next_log_probs(done_codes, partial)
                    for code, nxt in trie.children(partial):
                        # Never walk into a prefix whose items are all in the session already.
                        if items_below[tuple(partial + [code])] <= set(done_items):
                            continue
                        candidates.append((score + float(log_probs[code]), done_codes, done_items, partial + [code], nxt))
                candidates.sort(key=lambda c: -c[0])
                beams = []
                for score, done_codes, done_items, partial, nxt in candidates[:beam_size]:
                    if level == levels - 1:
                        beams.append((score, done_codes + [partial], done_items + [nxt], []))
                    else:
                        beams.append((score, done_codes, done_items, partial))
    return [(score, items) for score, _, items, _ in beams]
