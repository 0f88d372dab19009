"""The real operator (kopf + the handlers) in a thread of the test process, against any cluster a
kubeconfig names (the session's real control plane, or another cluster)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path


class OperatorThread:
    """The real operator (kopf + handlers) in a thread with its own event loop."""

    def __init__(self, kubeconfig: Path, namespace: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> OperatorThread:
        import kubernetes.config.kube_config as kc

        os.environ["KUBECONFIG"] = str(self.kubeconfig)
        kc.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig)
        import kopf

        from spin_operator import handlers  # noqa: F401  (importing it registers the handlers)
        from spin_operator.kube import client as kube_client

        kube_client.reset_api_client()

        def run() -> None:
            try:
                asyncio.run(
                    kopf.operator(
                        standalone=True,
                        clusterwide=self.namespace is None,
                        namespaces=[self.namespace] if self.namespace else (),
                        ready_flag=self.ready_flag,
                        stop_flag=self.stop_flag,
                    )
                )
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="operator", daemon=True)
        self.thread.start()
        if not self.ready_flag.wait(30):
            raise RuntimeError(f"operator not ready: {self.error!r}")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive(), "operator did not stop within 30 s"
