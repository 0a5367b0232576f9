"""`--grads`: the gradient rows (and after_3_adamw_steps rows) of one head, added after its forward matrix.

Per dtype, Flax device and PyTorch device: for each input case, dLoss/dParam of every parameter
(`parity.grads`); in float32 then three AdamW steps on the first case (`parity.adamw`). A float64
gold gradient of the PyTorch reference on the CPU, computed once per head and case, is the yardstick of
fp16/bf16 and tells, in every dtype, which gradients are zero in exact arithmetic. The `max_length`
case runs only in the dtypes that run it forward (`parity.options.cases_for_dtype`). Rows are named `{head}/{case}/grad/{transformers name}` and
`{head}/{case}/after_3_adamw_steps/{transformers name}`.
"""

from __future__ import annotations

import time

from parity import adamw
from parity.checkpoint import ParityInputError
from parity.grads import (
    ORDER_NOTE, TIED_NOTE, add_grad_rows, add_param_rows, check_names, draw_targets, flax_grads, torch_grads,
    zero_gradients,
)

LOSS_NOTE = ("Gradients (--grads): dropout off, one loss per input case with targets drawn from the seed: lm/causal "
             "token cross-entropy (-100 on padding and a quarter of the tokens), cls cross-entropy, qa span loss, base "
             "mean of last_hidden_state² over unpadded decoder positions; flax_bart.losses under jax.grad vs the "
             "built-in PyTorch reference under autograd; every parameter under its PyTorch name (Flax gradients "
             "mapped by convert.flax_to_pt).")


def _torch_dtype(dtype: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[dtype]


class _Clock:
    """`clock(part, fn, *args)`: fn(*args), its wall seconds added to `seconds[part]`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, part: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0


class GradCheck:
    """The gradient check of one head: targets drawn once, the float64 gold gradients computed on demand."""

    def __init__(self, checkpoint, head: str, state_dict, params, cases: dict, opts):
        if opts.mesh is not None:
            raise ParityInputError("--grads with --mesh: gradients are checked on one device only; drop --mesh")
        if not cases:
            raise ParityInputError(f"--grads: head {head!r} has no input case")
        self.config, self.head, self.sd, self.params, self.cases = checkpoint.config, head, state_dict, params, cases
        self.opts = opts
        self.targets = {c: draw_targets(self.config, head, case, opts.seed) for c, case in cases.items()}
        self._gold: dict = {}
        self._masses: dict = {}  # case -> bias name -> absolute sum of its gradient's terms (gold run)

    def cases_for(self, dtype: str) -> dict:
        """The cases checked in `dtype`: the max_length case only in --max-length-dtypes, as the forward rows."""
        from parity.options import cases_for_dtype

        return cases_for_dtype(self.cases, dtype, self.opts)

    def _reference(self, dtype: str, device):
        from parity.reference import build_reference

        return build_reference(self.config, self.head, self.sd, dtype=_torch_dtype(dtype), device=device)

    def torch_side(self, dtype: str, device, cases: dict, masses: dict | None = None) -> dict:
        """Each case's gradients; with `masses`, also each case's bias masses into `masses[case]`."""
        model = self._reference(dtype, device)
        return {c: torch_grads(model, self.head, case, self.targets[c],
                               masses=None if masses is None else masses.setdefault(c, {}))
                for c, case in cases.items()}

    def gold(self, cases: dict) -> dict:
        """The float64 gold gradients of `cases`, each case computed once per head."""
        import torch

        missing = {c: case for c, case in cases.items() if c not in self._gold}
        if missing:
            self._gold.update(self.torch_side("float64", torch.device("cpu"), missing, masses=self._masses))
        return {c: self._gold[c] for c in cases}

    def flax_side(self, dtype: str, device, cases: dict) -> dict:
        import jax

        from parity.harness import flax_model

        model = flax_model(self.config, self.head, dtype, precision=self.opts.precision)
        cast = {"float32": model.to_fp32, "float16": model.to_fp16, "bfloat16": model.to_bf16}[dtype](self.params)
        with jax.default_device(device):
            params = jax.device_put(cast, device)
            return {c: flax_grads(model, params, self.head, case, self.targets[c], self.config)
                    for c, case in cases.items()}

    def judge(self, report, dtype: str, fdevs: dict, tdevs: dict) -> dict[str, float]:
        """Add the rows of `dtype` to every (Flax device, PyTorch device) column, after the forward rows.
        Returns where the time went: seconds of the float64 gold, the PyTorch and Flax gradients, the
        comparisons and (float32) the AdamW steps, as `grads_{part}_s`."""
        for note in (LOSS_NOTE, TIED_NOTE, ORDER_NOTE) + ((adamw.NOTE,) if dtype == "float32" else ()):
            if note not in report.notes:
                report.notes.append(note)
        clock = _Clock()
        cases = self.cases_for(dtype)
        gold = clock("gold", self.gold, cases)
        torch_out = clock("torch", lambda: {td: self.torch_side(dtype, dev, cases) for td, dev in tdevs.items()})
        flax_out = clock("flax", lambda: {fd: self.flax_side(dtype, dev, cases) for fd, (dev, _) in fdevs.items()})
        clock("compare", self._add_rows, report, dtype, fdevs, tdevs, cases, gold, torch_out, flax_out)
        if dtype == "float32":
            clock("adamw", self._adamw, report, fdevs, tdevs)
        return {f"grads_{k}_s": round(v, 3) for k, v in clock.seconds.items()}

    def _add_rows(self, report, dtype, fdevs, tdevs, cases, gold, torch_out, flax_out) -> None:
        for fd in fdevs:
            for td in tdevs:
                col = {"dtype": dtype, "flax_device": fd, "torch_device": td}
                for c in cases:
                    t, f = torch_out[td][c], flax_out[fd][c]
                    check_names(t, f, self.head)
                    zero = add_grad_rows(report, col, f"{self.head}/{c}/grad", t, f, gold[c], self._masses.get(c))
                    if zero:
                        self._note_zero(report, zero)

    def _note_zero(self, report, names: list[str]) -> None:
        note = (f"Gradients of {self.head} zero in exact arithmetic (float64 gold), judged at the scale of all "
                "gradients and, after AdamW steps, only bounded: " + ", ".join(names))
        if not any(n.startswith(note) for n in report.notes):
            report.notes.append(note)

    def _adamw(self, report, fdevs: dict, tdevs: dict) -> None:
        import jax

        from parity.harness import flax_model

        name, case = next(iter(self.cases.items()))
        targets = self.targets[name]
        noisy = zero_gradients(self.gold({name: case})[name])[0]
        torch_out = {td: adamw.torch_steps(self._reference("float32", dev), self.head, case, targets)
                     for td, dev in tdevs.items()}
        model = flax_model(self.config, self.head, "float32", precision=self.opts.precision)
        inputs = {k: v for k, v in case.items() if v is not None}
        for fd, (dev, _) in fdevs.items():
            with jax.default_device(dev):
                params = jax.device_put(model.to_fp32(self.params), dev)
                f = adamw.flax_steps(model, self.head, params, inputs, targets, self.config)
            for td in tdevs:
                check_names(torch_out[td], f, self.head)
                add_param_rows(report, {"dtype": "float32", "flax_device": fd, "torch_device": td},
                               f"{self.head}/{name}/{adamw.PREFIX}", torch_out[td], f, noisy, adamw.noisy_verdict)
