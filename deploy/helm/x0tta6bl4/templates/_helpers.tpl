{{/* Names. "x0tta6bl4" when the release is named after the chart. */}}
{{- define "x0t.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "x0t.fullname" -}}
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

{{- define "x0t.control.fullname" -}}
{{- printf "%s-control" (include "x0t.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "x0t.node.fullname" -}}
{{- printf "%s-node" (include "x0t.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "x0t.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "x0t.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "x0t.caSecretName" -}}
{{- default (printf "%s-ca" (include "x0t.fullname" .)) .Values.ca.existingSecret }}
{{- end }}

{{- define "x0t.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels: app.kubernetes.io/name and component are what deploy/monitoring selects. */}}
{{- define "x0t.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "x0t.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: x0tta6bl4
{{- end }}

{{- define "x0t.selectorLabels" -}}
app.kubernetes.io/name: {{ include "x0t.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "x0t.control.selectorLabels" -}}
{{ include "x0t.selectorLabels" . }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "x0t.node.selectorLabels" -}}
{{ include "x0t.selectorLabels" . }}
app.kubernetes.io/component: node
{{- end }}

{{/* Pod-level hardening shared by every workload. */}}
{{- define "x0t.podSeccomp" -}}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container hardening of the control plane: non-root, nothing writable but volumes. */}}
{{- define "x0t.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "x0t.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ printf "%s-env" (include "x0t.control.fullname" .) }}{{ end }}
{{- end }}

{{- define "x0t.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecret }}{{ else }}{{ printf "%s-env" (include "x0t.control.fullname" .) }}{{ end }}
{{- end }}

{{- define "x0t.controlPlaneUrl" -}}
{{- default (printf "http://%s:%d" (include "x0t.control.fullname" .) (int .Values.service.port)) .Values.node.controlPlaneUrl }}
{{- end }}

{{/* Node containers: UID 0 (see node-daemonset.yaml), no capability but NET_ADMIN for TUN. */}}
{{- define "x0t.nodeSecurityContext" -}}
runAsUser: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
  {{- if .addNetAdmin }}
  add:
    - NET_ADMIN
  {{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
