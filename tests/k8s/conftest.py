# The fixtures are process-wide singletons, so a parent conftest importing them as well is harmless.
from k8s.fixtures import kube_cluster, kube_namespace, node_agent  # noqa: F401
