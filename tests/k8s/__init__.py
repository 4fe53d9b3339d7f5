"""Test infrastructure for a real local kube-apiserver (cluster.py) and a stand-in kubelet (node_agent.py)."""
