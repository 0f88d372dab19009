{{/*
Names, labels and shared RBAC rules of the spin-operator chart (the conventions of the
KubeRay and Kubeflow Trainer charts: name/fullname/chart helpers, standard labels).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "spin-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, or "<release>-<chart>" (just the release
name when it already contains the chart name), cut to 63 characters.
*/}}
{{- define "spin-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): the full name plus the
release namespace, so that releases in two namespaces do not collide.
*/}}
{{- define "spin-operator.clusterName" -}}
{{- printf "%s-%s" (include "spin-operator.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "name-version" as used by the helm.sh/chart label. */}}
{{- define "spin-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "spin-operator.labels" -}}
helm.sh/chart: {{ include "spin-operator.chart" . }}
{{ include "spin-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spinrun
{{- end }}

{{/* Labels that select the operator pod (never change them: Deployment selectors are immutable). */}}
{{- define "spin-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spin-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "spin-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spin-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: the image's repository, else <images.registry>/spinrun-<name>; its tag, else
images.tag, else the chart's appVersion; a tag of the form sha256:... is a digest
(repository@sha256:...). With neither a repository nor a registry the chart refuses to render.
Usage: include "spin-operator.image" (dict "name" "trainer" "root" .)
*/}}
{{- define "spin-operator.image" -}}
{{- $images := .root.Values.images }}
{{- $image := get $images .name }}
{{- $repository := $image.repository }}
{{- if not $repository }}
{{- if not $images.registry }}
{{- fail (printf "images.registry must be set: no spinrun image is published anywhere. Build the images and push them to a registry your nodes can pull from (make images, then make push-images REGISTRY=registry.example.com/ml, which prints the values), then install with --set images.registry=registry.example.com/ml --set images.tag=<the printed tag>, or set images.%s.repository (images/README.md)" .name) }}
{{- end }}
{{- $repository = printf "%s/spinrun-%s" (trimSuffix "/" $images.registry) .name }}
{{- end }}
{{- $tag := $image.tag | default $images.tag | default .root.Chart.AppVersion | toString }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" $repository $tag }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the operator watches all namespaces. */}}
{{- define "spin-operator.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The rules of the objects the operator manages inside a watched namespace: exactly the calls
the operator makes (operator/spin_operator/kube/client.py and kopf itself), verb by verb;
tests/chart/test_chart.py replays the requests recorded by the operator's e2e tests against
them. No Secrets: pods get the HF token through a secretKeyRef, resolved by the kubelet.
*/}}
{{- define "spin-operator.namespacedRules" -}}
# SpinRuns: kopf lists/watches them and patches its progress annotations; the reconcile
# re-reads a run before acting on it.
- apiGroups: ["spin.dev"]
  resources: ["spinruns"]
  verbs: ["get", "list", "watch", "patch"]
# The reconcile writes status (merge patch on the status subresource).
- apiGroups: ["spin.dev"]
  resources: ["spinruns/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's
# finalizers to create them (no API call uses it).
- apiGroups: ["spin.dev"]
  resources: ["spinruns/finalizers"]
  verbs: ["update"]
# Step Jobs: created, watched (kopf index + events), patched to suspend/resume, deleted to retry.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# The run's PVC and its per-iteration spec ConfigMaps (kopf indexes; the ConfigMaps are
# garbage-collected with the SpinRun, the PVC too only with deleteWithRun; never deleted by
# the operator).
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "configmaps"]
  verbs: ["list", "watch", "create"]
# The training Job's headless Service (recreated with the Job on retry).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "delete"]
# The run's pods, read only (kopf index + events, by label): why a step cannot start
# (ImagePullBackOff, CreateContainerConfigError, Unschedulable, an unbound claim) and how many
# training pods run.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events about SpinRuns (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.pytorchjob.enabled }}
# Training as a Kubeflow PyTorchJob (spec.training.launcher: pytorchjob): listed by run label,
# created, patched to suspend/resume, deleted to retry.
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["list", "create", "patch", "delete"]
{{- end }}
{{- if .Values.trainjob.enabled }}
# Training as a Kubeflow Trainer v2 TrainJob (spec.training.launcher: trainjob): listed by run
# label, created, patched to suspend/resume, deleted to retry.
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["list", "create", "patch", "delete"]
{{- end }}
{{- if .Values.gangScheduling.enabled }}
# The PodGroup of a gang-scheduled multi-node training step (garbage-collected with the SpinRun).
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create"]
{{- end }}
{{- if .Values.kueue.enabled }}
# Kueue's Workloads of the run's queued Jobs: found by the kueue.x-k8s.io/job-uid label and
# (de)activated (spec.active) to suspend or resume the run by Kueue's rules.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped rules every mode needs: kopf lists and watches CRDs to find the SpinRun API. */}}
{{- define "spin-operator.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
