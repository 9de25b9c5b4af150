"""The GPU tab: utilisation, memory and power per GPU (CPU on a CPU box)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.text import Text

from tina_tui.view import described
from tina_tui.widgets.text import usd, meter
from tina_tui.widgets.panel import Panel

if TYPE_CHECKING:
    from tina_tui.view import RunRow


class GpuPanel(Panel):
    """Utilisation and memory per GPU from the run's latest system sample (nvitop-style bars)."""

    def show(self, run: RunRow | None, system: Sequence[Mapping[str, Any]]) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        if not run:
            self.set_text(t)
            return
        d = run if described(run) else None
        gpus = (d["gpu_count"] if d else 0) or 0
        if not system:
            device = (d["device"] if d else None) or "cpu"
            what = "CPU" if not gpus or str(device).lower() == "cpu" else f"{gpus}x {device} (no sample yet)"
            t.append(f"{what}\n", style="bold")
            t.append(f"{usd(d['gpu_hour_usd'] if d else None)}/GPU-hour", style="dim")
            self.set_text(t)
            return
        bar = max(10, min(40, (self.size.width or 80) // 2 - 20))
        for g in system:
            util = g.get("util") or 0
            used, total = g.get("mem_used") or 0, g.get("mem_total") or 0
            t.append(f"GPU{g.get('index', '?')} ", style="bold")
            t.append(f"util {meter(util / 100, bar)} {util:3.0f}%  ", style="green" if util >= 50 else "yellow")
            t.append(f"mem {meter(used / total if total else 0, bar)} {used / 1024:.1f}/{total / 1024:.1f}G")
            if g.get("power_w") is not None:
                t.append(f"  {g['power_w']:.0f}W", style="dim")
            t.append("\n")
        self.set_text(t)


