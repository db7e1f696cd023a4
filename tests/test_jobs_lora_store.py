"""LoraStore (atomic, verified adapters and checkpoints), settings_hash, AdapterCache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from lorafx.errors import InvalidInput, NotFound
from lorafx.server.jobs import (AdapterCache, CorruptFile, LorafxMetrics, LoraStore,
                                adapter_name, capture_rng_state, restore_rng_state, settings_hash)

SHOT = "sh010"
KEY = settings_hash({"rank": 16, "alpha": 16, "lr": 1e-4, "steps": 100, "config": "masked"})


def lora(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.attn1.to_q.lora_A.weight": torch.randn(rank, 32, generator=g),
        "blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, rank, generator=g),
        "blocks.0.ffn.net.2.lora_A.weight": torch.randn(rank, 64, generator=g).to(torch.bfloat16),
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- settings hash
def test_settings_hash_is_canonical():
    base = {"rank": 16, "lr": 1e-4, "betas": (0.9, 0.99), "mask": {"mode": "bbox", "grow": 0.1}}
    reordered = {"mask": {"grow": 0.1, "mode": "bbox"}, "betas": [0.9, 0.99], "lr": 1e-4,
                 "rank": 16.0}
    assert settings_hash(base) == settings_hash(reordered)
    assert len(settings_hash(base)) == 64
    assert settings_hash(base) != settings_hash({**base, "rank": 32})
    assert settings_hash({"seed": True}) != settings_hash({"seed": 1})
    with pytest.raises(InvalidInput):
        settings_hash({"lr": float("nan")})
    with pytest.raises(InvalidInput):
        settings_hash({1: "int key"})


# ---------------------------------------------------------------------- adapters
def test_save_load_round_trip_with_metadata(tmp_path):
    store = LoraStore(tmp_path)
    sd = lora(0)
    path = store.save(SHOT, KEY, sd, {"base_model": "Wan2.1-I2V-14B-480P", "rank": 4}, step=100)
    assert path == store.path_for(SHOT, KEY) and path.is_file()
    back = store.load(SHOT, KEY)
    assert same(back.state_dict, sd) and back.step == 100
    assert back.metadata == {"base_model": "Wan2.1-I2V-14B-480P", "rank": "4"}
    [info] = store.list()
    assert (info.shot, info.key, info.step, info.error) == (SHOT, KEY, 100, None)
    with pytest.raises(NotFound):
        store.load(SHOT, settings_hash({"rank": 8}))
    with pytest.raises(InvalidInput):
        store.save("../escape", KEY, sd)
    with pytest.raises(InvalidInput):
        store.save(SHOT, KEY, sd, {"lorafx.step": "7"})


def test_exception_between_temp_write_and_replace_keeps_old_file_and_leaves_no_temp(
        tmp_path, monkeypatch):
    store = LoraStore(tmp_path)
    store.save(SHOT, KEY, lora(1), step=50)

    def crash(src, dst):
        raise OSError("disk pulled")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled"):
        store.save(SHOT, KEY, lora(2), step=100)
    monkeypatch.undo()

    assert sorted(os.listdir(store.path_for(SHOT, KEY).parent)) == ["adapter.safetensors"]
    back = store.load(SHOT, KEY)
    assert same(back.state_dict, lora(1)) and back.step == 50


def test_writer_killed_mid_save_leaves_old_adapter_intact(tmp_path):
    store = LoraStore(tmp_path)
    store.save(SHOT, KEY, lora(1), step=50)
    # The child writes the new adapter completely, then is killed just before the rename.
    child = textwrap.dedent(f"""
        import os, sys, time, torch
        from lorafx.server.jobs import LoraStore
        def hang(src, dst):
            print("WRITTEN", flush=True)
            time.sleep(60)
        os.replace = hang
        LoraStore({str(tmp_path)!r}).save({SHOT!r}, {KEY!r}, {{"w": torch.ones(256, 256)}},
                                          step=100)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    leftovers = [n for n in os.listdir(store.path_for(SHOT, KEY).parent) if n.startswith(".tmp-")]
    assert len(leftovers) == 1  # the crash left its temp file behind...
    [info] = store.list()  # ...but nothing sees it
    assert info.step == 50
    back = store.load(SHOT, KEY)
    assert same(back.state_dict, lora(1))
    assert store.sweep_temp(older_than_s=3600) == 0  # too recent: might be a live write
    LoraStore(tmp_path, sweep_temp_older_than_s=0)  # a server restart sweeps it
    assert sorted(os.listdir(store.path_for(SHOT, KEY).parent)) == ["adapter.safetensors"]


def test_truncated_bitflipped_and_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    store = LoraStore(tmp_path)
    path = store.save(SHOT, KEY, lora(3), step=10)
    data = path.read_bytes()

    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFile, match="unreadable"):
        store.load(SHOT, KEY)
    assert "unreadable" in store.list()[0].error  # list() flags it too, without raising

    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # inside the last tensor's data: the format itself stays valid
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFile, match="integrity"):
        store.load(SHOT, KEY)

    save_file(lora(3), str(path))  # a plain safetensors file dropped in by hand
    with pytest.raises(CorruptFile, match="not a lorafx LoRA"):
        store.load(SHOT, KEY)

    other_key = settings_hash({"rank": 99})
    store.save(SHOT, other_key, lora(4))
    os.replace(store.path_for(SHOT, other_key), path)  # right format, wrong place
    with pytest.raises(CorruptFile, match="belongs to"):
        store.load(SHOT, KEY)
    assert CorruptFile("x").code == "corrupt_file"


def test_delete_one_key_or_whole_shot(tmp_path):
    store = LoraStore(tmp_path)
    k2 = settings_hash({"rank": 32})
    store.save(SHOT, KEY, lora(1))
    store.save(SHOT, k2, lora(2))
    store.save("sh020", KEY, lora(3))
    assert store.delete(SHOT, KEY) and not store.exists(SHOT, KEY) and store.exists(SHOT, k2)
    assert store.delete(SHOT) and [i.shot for i in store.list()] == ["sh020"]
    assert not store.delete(SHOT)


# ---------------------------------------------------------------------- checkpoints
def _train_a_bit(steps: int):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.AdamW([w], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    return w, opt


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    store = LoraStore(tmp_path, keep_checkpoints=2)
    w, opt = _train_a_bit(3)
    rng = capture_rng_state()
    expected_next = torch.rand(5)
    path = store.save_checkpoint(SHOT, KEY, 30, {"w": w.detach()}, opt.state_dict(), rng)
    assert path == store.checkpoint_path(SHOT, KEY, 30)
    assert sorted(os.listdir(path)) == ["lora.safetensors", "manifest.json", "train_state.pt"]

    ckpt = store.load_checkpoint_dir(path)
    assert ckpt.step == 30 and torch.equal(ckpt.lora_state["w"], w.detach())
    w2 = torch.nn.Parameter(ckpt.lora_state["w"].clone())
    opt2 = torch.optim.AdamW([w2], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)
    opt2.load_state_dict(ckpt.optimizer_state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    torch.rand(100)  # move the generator on, then restore it
    restore_rng_state(ckpt.rng_state)
    assert torch.equal(torch.rand(5), expected_next)


def test_checkpoints_prune_and_skip_a_damaged_newest(tmp_path):
    store = LoraStore(tmp_path, keep_checkpoints=2)
    w, opt = _train_a_bit(1)
    for step in (10, 20, 30):
        store.save_checkpoint(SHOT, KEY, step, {"w": w.detach() + step}, opt.state_dict())
    assert store.list_checkpoints(SHOT, KEY) == [20, 30]
    assert store.load_checkpoint(SHOT, KEY).step == 30

    state = store.checkpoint_path(SHOT, KEY, 30) / "train_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(CorruptFile, match="checksum"):
        store.load_checkpoint(SHOT, KEY, step=30)
    fallback = store.load_checkpoint(SHOT, KEY)  # newest intact one
    assert fallback.step == 20 and torch.equal(fallback.lora_state["w"], w.detach() + 20)

    assert store.delete_checkpoints(SHOT, KEY) == 2
    with pytest.raises(NotFound):
        store.load_checkpoint(SHOT, KEY)


# ---------------------------------------------------------------------- adapter cache
class FakeModel:
    """Stands in for the peft model: records what the cache asked it to do."""

    def __init__(self):
        self.calls, self.adapters, self.active = [], set(), None

    def load(self, key):
        self.calls.append(("load", key))
        self.adapters.add(key)

    def activate(self, key):
        assert key in self.adapters, "activated an adapter that is not loaded"
        self.active = key

    def evict(self, key):
        self.calls.append(("evict", key))
        self.adapters.discard(key)


def test_adapter_cache_evicts_the_least_recently_used(tmp_path):
    model, metrics = FakeModel(), LorafxMetrics()
    cache = AdapterCache(2, model.load, model.activate, model.evict, metrics=metrics)
    for key in ("a", "b", "a", "c"):  # "a" reused, so "b" is the LRU when "c" arrives
        cache.activate(key)
    assert model.calls == [("load", "a"), ("load", "b"), ("evict", "b"), ("load", "c")]
    assert cache.loaded == ["a", "c"] and model.adapters == {"a", "c"}
    assert cache.active == "c" and model.active == "c"
    assert cache.stats() == {"capacity": 2, "loaded": 2, "hits": 1, "misses": 3, "evictions": 1}
    text = metrics.render().decode()
    assert "lorafx_lora_cache_hits_total 1.0" in text
    assert "lorafx_lora_cache_misses_total 3.0" in text
    assert cache.invalidate("a") and model.adapters == {"c"} and "a" not in cache


def test_adapter_cache_failed_load_is_not_recorded():
    model = FakeModel()

    def flaky_load(key):
        if key == "bad":
            raise CorruptFile("damaged adapter")
        model.load(key)

    cache = AdapterCache(1, flaky_load, model.activate, model.evict)
    cache.activate("good")
    with pytest.raises(CorruptFile):
        cache.activate("bad")
    assert "bad" not in cache and cache.loaded == []  # "good" was evicted to make room


def test_use_holds_the_model_until_the_render_ends():
    model = FakeModel()
    cache = AdapterCache(1, model.load, model.activate, model.evict)
    inside, other_done = threading.Event(), threading.Event()
    seen_during_render = []

    def render():
        with cache.use("sh010"):
            inside.set()
            time.sleep(0.2)
            seen_during_render.append(model.active)

    t = threading.Thread(target=render)
    t.start()
    inside.wait(5)
    other = threading.Thread(target=lambda: (cache.activate("sh020"), other_done.set()))
    other.start()
    assert not other_done.wait(0.1)  # blocked: it would evict the adapter mid-render
    t.join(5)
    other.join(5)
    assert seen_during_render == ["sh010"] and other_done.is_set() and cache.active == "sh020"


def test_adapter_name_is_peft_safe():
    name = adapter_name("sh010.v2-comp", KEY)
    assert "." not in name and "-" not in name and name.endswith(KEY[:16])


def test_exclusive_blocks_adapter_switches_and_forgets_the_active_adapter():
    model = FakeModel()
    cache = AdapterCache(2, model.load, model.activate, model.evict)
    cache.activate("sh010")
    switched = threading.Event()
    with cache.exclusive():  # e.g. training a fresh adapter on the shared model
        t = threading.Thread(target=lambda: (cache.activate("sh020"), switched.set()))
        t.start()
        assert not switched.wait(0.1)
    t.join(5)
    assert switched.is_set() and cache.loaded == ["sh010", "sh020"]
    with cache.exclusive():
        model.active = None  # the block may leave any adapter (or none) active
    assert cache.active is None
