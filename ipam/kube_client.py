"""The Kubernetes API client as flannel builds it from its flags.

`--kubeconfig-file` names a kubeconfig (its current context); `--kube-api-url` names the
server (and overrides the kubeconfig's); with neither, the in-cluster config of a pod (the
service account's token and CA, KUBERNETES_SERVICE_HOST). The official `kubernetes` client is
imported here only, and only when one of those modes is used.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

# a watch per resource (nodes; pods, namespaces, networkpolicies for NetworkPolicy) holds a
# connection each, and the node's PATCH needs one more
POOL_SIZE = 8


class KubeConfigError(ValueError):
    """No usable client configuration: one line naming the flag and the fix."""


@dataclass(frozen=True)
class KubeApi:
    """A configured client and where it points."""

    client: Any  # kubernetes.client.ApiClient
    url: str

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client)

    def networking(self) -> Any:
        from kubernetes import client

        return client.NetworkingV1Api(self.client)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a pool never matters at the end
            self.client.close()


def connect(kubeconfig: str | None, api_url: str | None) -> KubeApi:
    """The client for the flags (see the module's docstring); KubeConfigError otherwise."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    conf = client.Configuration()
    try:
        if kubeconfig:
            if not os.path.exists(kubeconfig):
                raise KubeConfigError(f"--kubeconfig-file {kubeconfig}: no such file")
            config.load_kube_config(config_file=kubeconfig, client_configuration=conf,
                                     persist_config=False)
        elif not api_url:
            config.load_incluster_config(client_configuration=conf)
    except ConfigException as exc:
        where = f"--kubeconfig-file {kubeconfig}" if kubeconfig else (
            "no --kubeconfig-file or --kube-api-url given, and the in-cluster config")
        raise KubeConfigError(f"{where}: {exc}") from None
    if api_url:
        conf.host = api_url.rstrip("/")
    conf.connection_pool_maxsize = POOL_SIZE
    conf.retries = False  # the reflectors retry, with their own backoff
    return KubeApi(client.ApiClient(conf), conf.host)
