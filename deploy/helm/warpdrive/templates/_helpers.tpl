{{/* Names and labels shared by every template. */}}
{{- define "warpdrive.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "warpdrive.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "warpdrive.labels" -}}
app.kubernetes.io/name: {{ include "warpdrive.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "warpdrive.selector" -}}
app.kubernetes.io/name: {{ include "warpdrive.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "warpdrive.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "warpdrive.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "warpdrive.secretName" -}}
{{- printf "%s-secrets" (include "warpdrive.fullname" .) -}}
{{- end -}}

{{- define "warpdrive.controlPlaneUrl" -}}
{{- printf "http://%s-control-plane:%v" (include "warpdrive.fullname" .) .Values.controlPlane.port -}}
{{- end -}}

{{/* The agent's liveness check, an exec command: the mount point is a mount, and a byte of its
health file (which the mount serves itself, without a backend) reads. A stat alone would pass
for a while after the agent died: the kernel answers it from cached attributes; an open and a
read reach the agent, or fail at once (ENOTCONN) when it is gone. */}}
{{- define "warpdrive.mountAnswers" -}}
["sh", "-c", "mountpoint -q \"$1\" && [ -n \"$(head -c 1 \"$1/.warpdrive-health\")\" ]", "mount-answers", {{ .Values.agent.mountPoint | quote }}]
{{- end -}}
