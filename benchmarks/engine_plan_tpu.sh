#!/bin/bash
# The engine compiled for TPU topologies by libtpu, ahead of time, on this CPU host
# (issue 33): the demo model's shape (preset qwen2-0.5b, the shape of
# Qwen2.5-Coder-0.5B) and Qwen2-7B in bf16, on v5e-8 (v5e:2x4) and v5p-8 (v5p:2x2x1),
# decode compiled for 1, 8 and 64 slots over a pool of 64 slots, prefill at every shape,
# at the widest block table (every slot at 2048 tokens: what the table reports; drop
# --widest-only to compile every width too). The cost model's ceiling: a loop that only
# streams weights. One JSON plan per row in benchmarks/results/engine_plan_tpu/NAME.json,
# its compile log in NAME.log, the table in table.md. Resumable: a saved plan is skipped.
#   PATH=.venv/bin:$PATH bash benchmarks/engine_plan_tpu.sh
set -euo pipefail
out=benchmarks/results/engine_plan_tpu; mkdir -p "$out"
# name | preset | topology
rows=(
  "7b-v5e8|qwen2-7b|v5e:2x4"
  "7b-v5p8|qwen2-7b|v5p:2x2x1"
  "demo-v5e8|qwen2-0.5b|v5e:2x4"
  "demo-v5p8|qwen2-0.5b|v5p:2x2x1"
)
plans=()
for row in "${rows[@]}"; do
  IFS='|' read -r name model topo <<< "$row"
  plans+=("$out/$name.json")
  [ -s "$out/$name.json" ] && continue
  python scripts/plan_engine.py --preset "$model" --topology "$topo" --slots 1,8,64 \
    --widest-only --json-out "$out/$name.json" > /dev/null 2> "$out/$name.log"
done
python scripts/plan_engine.py --table "${plans[@]}" > "$out/table.md"
[ -s "$out/ceiling.json" ] || python - v5e:2x4 v5p:2x2x1 > "$out/ceiling.json" <<'PY'
"""The TPU cost model's ceiling for decode: a loop that only streams weights (28
matrices of 3584 x 4736, the shape of one device's MLP shards of Qwen2-7B at tensor 4)
through matmuls with M rows. Its fraction of the HBM roofline bounds what any decode
program scores by this cost model."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marco_jax import topology

jax.config.update("jax_platforms", "cpu")
found = []
for name in sys.argv[1:]:
    device = topology.tpu_devices(name)[0]
    chip = topology.chip_of(device.device_kind)
    here = NamedSharding(Mesh(np.array([device]), ("x",)), PartitionSpec())
    weights = [jax.ShapeDtypeStruct((3584, 4736), jnp.bfloat16, sharding=here)] * 28
    steps = jax.ShapeDtypeStruct((), jnp.int32, sharding=here)

    def decode(weights, x, steps):
        def step(carry):
            i, x = carry
            for up, down in zip(weights[::2], weights[1::2]):
                x = (jax.nn.silu(x @ up) @ down.T).astype(x.dtype)
            return i + 1, x
        return jax.lax.while_loop(lambda c: c[0] < steps, step, (0, x))[1]

    for m in (1, 8):
        x = jax.ShapeDtypeStruct((m, 3584), jnp.bfloat16, sharding=here)
        compiled = jax.jit(decode).lower(weights, x, steps).compile()
        views = compiled.as_text().count('custom_call_target="ConcatBitcast"')
        seconds = compiled.cost_analysis()["optimal_seconds"] + views
        weight_bytes = 28 * 3584 * 4736 * 2
        roofline = weight_bytes / chip.hbm_bandwidth
        found.append({"topology": name, "chip": chip.name, "rows": m,
                      "weight_bytes": weight_bytes, "cost_model_seconds": seconds,
                      "roofline_seconds": roofline, "roofline_fraction": roofline / seconds})
print(json.dumps(found, indent=1))
PY
