"""The approval step: Airflow's HITL ApprovalOperator that also keeps the reviewer's answer on a rejection.

ApprovalOperator returns the response as its XCom only when the reviewer approves: on
"Reject" it skips the downstream tasks by raising, and nothing is returned. The pipeline
must record rejections too (who, when, why), so the response is pushed under the XCom key
`decision` before the operator acts on it, whatever the choice.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

DECISION_XCOM_KEY = "decision"


class RecordedApprovalOperator(ApprovalOperator):
    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if "error" not in event:
            responded_at = event.get("responded_at")
            context["ti"].xcom_push(
                key=DECISION_XCOM_KEY,
                value={
                    "chosen_options": list(event.get("chosen_options") or []),
                    "params_input": dict(event.get("params_input") or {}),
                    "responded_at": responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at,
                    "responded_by_user": dict(event.get("responded_by_user") or {}),
                },
            )
        return super().execute_complete(context=context, event=event)
