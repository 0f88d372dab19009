"""The cluster components' API client when the apiserver does not answer at all."""

from __future__ import annotations

import certifi
import pytest

from spin_cluster.api import Client, Endpoint, Unreachable
from spin_cluster.procs import free_port


def test_an_apiserver_that_does_not_answer_is_an_oserror_naming_the_request() -> None:
    """The kubelet survives a broken socket (OSError) in every loop; urllib3's own errors are not
    OSErrors, and one in a heartbeat used to end the kubelet while the apiserver restarted."""
    client = Client(Endpoint(f"https://127.0.0.1:{free_port()}", "token", certifi.where()), timeout=2)
    with pytest.raises(Unreachable, match=r"GET /api/v1/nodes: no answer from https://127\.0\.0\.1:") as caught:
        client.get("/api/v1/nodes")
    assert isinstance(caught.value, OSError)
    with pytest.raises(Unreachable, match=r"watch /api/v1/pods"):
        next(iter(client.watch("/api/v1/pods", timeout_seconds=1)))
