"""spin-cluster: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, built from source) on this machine's loopback, with a process kubelet of ours that
runs bound pods as local processes: the test bed of the operator and `make cluster`."""
