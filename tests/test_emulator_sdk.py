"""Clerk's official Python SDK (``clerk-backend-api``) as a client of the emulator:
it must parse every answer, successes and errors alike, into its own models."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pytest_agenttask.emulator import ClerkEmulator

clerk_backend_api = pytest.importorskip("clerk_backend_api")
models = clerk_backend_api.models
utils = clerk_backend_api.utils

TASK_ID = re.compile("agttsk_[0-9A-Za-z]{27}")
AGENT_ID = re.compile("agt_[0-9A-Za-z]{27}")
APP_URL = "http://localhost:3000/after-sign-in"
NO_RETRIES = utils.RetryConfig("none", utils.BackoffStrategy(1, 1, 1.0, 1), False)
QUICK_RETRIES = utils.RetryConfig("backoff", utils.BackoffStrategy(5, 20, 1.5, 2000), True)
_TLS = ssl.create_default_context()  # shared: nothing here speaks TLS


@pytest.fixture(scope="module")
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(verify=_TLS) as client:
        yield client


def make_sdk(clerk: ClerkEmulator, http: httpx.Client, **kwargs: Any) -> Any:
    kwargs.setdefault("retry_config", NO_RETRIES)
    return clerk_backend_api.Clerk(
        bearer_auth=kwargs.pop("bearer_auth", clerk.secret_key),
        server_url=clerk.api_url,
        client=http,
        timeout_ms=5000,
        **kwargs,
    )


@pytest.fixture
def sdk(clerk: ClerkEmulator, http_client: httpx.Client) -> Any:
    return make_sdk(clerk, http_client)


def request_for(clerk: ClerkEmulator, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "on_behalf_of": models.OnBehalfOf(user_id=clerk.default_user_id),
        "permissions": models.CreateAgentTaskPermissions.WILDCARD_,
        "agent_name": "sdk-agent",
        "task_description": "through the official SDK",
        "redirect_url": APP_URL,
    }
    fields.update(overrides)
    return models.CreateAgentTaskRequestBody(**fields)


def clerk_error(info: pytest.ExceptionInfo[Any], status: int, code: str) -> Any:
    error = info.value
    assert isinstance(error, models.ClerkErrors)
    assert error.status_code == status
    assert error.data.errors[0].code == code
    assert error.data.errors[0].message
    assert error.data.errors[0].long_message
    return error.data.errors[0]


def raw_error(info: pytest.ExceptionInfo[Any], status: int, code: str) -> None:
    error = info.value
    assert isinstance(error, models.SDKError)
    assert error.status_code == status
    assert json.loads(error.body)["errors"][0]["code"] == code


def test_create_parses_into_the_sdk_model(sdk: Any, clerk: ClerkEmulator) -> None:
    task = sdk.agent_tasks.create(request=request_for(clerk))
    assert isinstance(task, models.AgentTask)
    assert task.object == models.AgentTaskObject.AGENT_TASK
    assert TASK_ID.fullmatch(task.agent_task_id)
    assert AGENT_ID.fullmatch(task.agent_id)
    assert task.url.startswith(f"{clerk.frontend_api_url}/v1/agents/tasks?ticket=")
    with pytest.warns(DeprecationWarning, match="DEPRECATED"):
        assert task.task_id == task.agent_task_id
    emulated = clerk.task(task.agent_task_id)
    assert emulated.user_id == clerk.default_user_id
    assert emulated.session_max_duration_in_seconds == 1800


def test_create_from_a_typed_dict_with_an_identifier(sdk: Any, clerk: ClerkEmulator) -> None:
    task = sdk.agent_tasks.create(
        request={
            "on_behalf_of": {"identifier": "agent@example.com"},
            "permissions": "*",
            "agent_name": "sdk-agent",
            "task_description": "typed dict",
            "redirect_url": APP_URL,
            "session_max_duration_in_seconds": 600,
        }
    )
    emulated = clerk.task(task.agent_task_id)
    assert emulated.user_id == clerk.default_user_id
    assert emulated.session_max_duration_in_seconds == 600


def test_revoke_parses_a_task_without_url(sdk: Any, clerk: ClerkEmulator) -> None:
    created = sdk.agent_tasks.create(request=request_for(clerk))
    revoked = sdk.agent_tasks.revoke(agent_task_id=created.agent_task_id)
    assert isinstance(revoked, models.AgentTask)
    assert revoked.agent_task_id == created.agent_task_id
    assert revoked.agent_id == created.agent_id
    assert revoked.url is None
    assert clerk.task(created.agent_task_id).status == "revoked"


def test_revoking_twice_is_a_400(sdk: Any, clerk: ClerkEmulator) -> None:
    created = sdk.agent_tasks.create(request=request_for(clerk))
    sdk.agent_tasks.revoke(agent_task_id=created.agent_task_id)
    with pytest.raises(models.ClerkErrors) as info:
        sdk.agent_tasks.revoke(agent_task_id=created.agent_task_id)
    clerk_error(info, 400, "agent_task_cannot_be_revoked")


def test_revoking_an_unknown_task_is_a_404(sdk: Any) -> None:
    with pytest.raises(models.ClerkErrors) as info:
        sdk.agent_tasks.revoke(agent_task_id="agttsk_" + "0" * 27)
    clerk_error(info, 404, "agent_task_not_found")


def test_the_task_of_a_deleted_user_is_a_404(sdk: Any, clerk: ClerkEmulator) -> None:
    user_id = clerk.add_user(email_address="sdk-gone@example.com")
    created = sdk.agent_tasks.create(
        request=request_for(clerk, on_behalf_of=models.OnBehalfOf(user_id=user_id))
    )
    clerk.delete_user(user_id)
    with pytest.raises(models.ClerkErrors) as info:
        sdk.agent_tasks.revoke(agent_task_id=created.agent_task_id)
    clerk_error(info, 404, "agent_task_subject_not_found")


def test_an_unknown_user_is_a_404(sdk: Any, clerk: ClerkEmulator) -> None:
    request = request_for(clerk, on_behalf_of=models.OnBehalfOf(user_id="user_" + "0" * 27))
    with pytest.raises(models.ClerkErrors) as info:
        sdk.agent_tasks.create(request=request)
    clerk_error(info, 404, "resource_not_found")


@pytest.mark.parametrize(
    ("overrides", "code", "param"),
    [
        (
            {"on_behalf_of": {"identifier": "nobody@example.com"}},
            "form_identifier_not_found",
            "on_behalf_of.identifier",
        ),
        ({"on_behalf_of": {}}, "form_param_missing", "on_behalf_of"),
        ({"redirect_url": "not a url"}, "form_param_format_invalid", "redirect_url"),
        (
            {"session_max_duration_in_seconds": 0},
            "form_param_value_invalid",
            "session_max_duration_in_seconds",
        ),
    ],
)
def test_validation_errors_are_a_422(
    sdk: Any, clerk: ClerkEmulator, overrides: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(models.ClerkErrors) as info:
        sdk.agent_tasks.create(request=request_for(clerk, **overrides))
    error = clerk_error(info, 422, code)
    assert error.meta == {"param_name": param}
    assert info.value.data.meta == {}
    assert clerk.tasks == []


def test_a_wrong_key_is_a_401_sdk_error(clerk: ClerkEmulator, http_client: httpx.Client) -> None:
    sdk = make_sdk(clerk, http_client, bearer_auth="sk_test_wrong")
    with pytest.raises(models.SDKError) as info:
        sdk.agent_tasks.create(request=request_for(clerk))
    raw_error(info, 401, "clerk_key_invalid")


def test_the_rate_limit_is_a_429_sdk_error(clerk: ClerkEmulator, http_client: httpx.Client) -> None:
    with ClerkEmulator(rate_limit=True, rate_limit_requests=1, rate_limit_window=5.0) as limited:
        sdk = make_sdk(limited, http_client)
        sdk.agent_tasks.create(request=request_for(limited))
        with pytest.raises(models.SDKError) as info:
            sdk.agent_tasks.create(request=request_for(limited))
        raw_error(info, 429, "too_many_requests")
        assert int(info.value.headers["retry-after"]) >= 1


def test_an_injected_503_is_an_sdk_error(sdk: Any, clerk: ClerkEmulator) -> None:
    clerk.inject_fault(status=503, retry_after=1)
    with pytest.raises(models.SDKError) as info:
        sdk.agent_tasks.create(request=request_for(clerk))
    raw_error(info, 503, "service_unavailable")
    assert clerk.tasks == []


def test_the_sdk_retries_a_5xx_honouring_retry_after(
    clerk: ClerkEmulator, http_client: httpx.Client
) -> None:
    fault = clerk.inject_fault(method="POST", status=503, retry_after=0.01)
    sdk = make_sdk(clerk, http_client, retry_config=QUICK_RETRIES)
    task = sdk.agent_tasks.create(request=request_for(clerk))
    assert fault.fired == 1
    assert [t.agent_task_id for t in clerk.tasks] == [task.agent_task_id]


def test_a_retried_create_after_a_lost_answer_makes_a_second_task(
    clerk: ClerkEmulator, http_client: httpx.Client
) -> None:
    clerk.inject_fault(method="POST", path="/v1/agents/tasks", status=500, processed=True)
    sdk = make_sdk(clerk, http_client, retry_config=QUICK_RETRIES)
    task = sdk.agent_tasks.create(request=request_for(clerk))
    assert len(clerk.pending_tasks()) == 2  # the first one is orphaned
    assert clerk.tasks[1].agent_task_id == task.agent_task_id


def test_a_dropped_answer_reaches_the_caller_even_with_retries(
    clerk: ClerkEmulator, http_client: httpx.Client
) -> None:
    # The SDK retries network errors and timeouts, not a server that hung up
    # without answering (a protocol error): the created task is left behind.
    clerk.inject_fault(method="POST", drop=True, processed=True)
    sdk = make_sdk(clerk, http_client, retry_config=QUICK_RETRIES)
    with pytest.raises(httpx.RemoteProtocolError):
        sdk.agent_tasks.create(request=request_for(clerk))
    assert len(clerk.pending_tasks()) == 1
