"""The process kubelet: runs the pods bound to its nodes as local processes, each pod in a network
namespace of its own and each container in a mount namespace over the host's root."""
