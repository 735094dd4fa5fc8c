"""The study's stage names, exactly as the web client spells them."""
from __future__ import annotations

NOT_READY = "准备"
RAPID = "快速发散"
DEEP = "深入发散"
CONVERGENCE = "收敛"
FINISHED = "完成"
DISABLED = "禁止"

STAGES = (NOT_READY, RAPID, DEEP, CONVERGENCE, FINISHED, DISABLED)

# The stages whose sketches the client saves, and the participant field that holds each list.
SCHEME_FIELDS = {
    RAPID: "rapidDivergenceSchemes",
    DEEP: "deepDivergenceSchemes",
    CONVERGENCE: "convergenceSchemes",
}
