{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "gguf-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, unless the release name already holds the chart's. */}}
{{- define "gguf-serve.fullname" -}}
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

{{- define "gguf-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gguf-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gguf-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gguf-serve.labels" -}}
helm.sh/chart: {{ include "gguf-serve.chart" . }}
{{ include "gguf-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gguf-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gguf-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag; the tag defaults to <appVersion>-cuda or <appVersion>-cpu (the Dockerfile targets). */}}
{{- define "gguf-serve.image" -}}
{{- $flavor := ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag) }}
{{- end }}

{{/* settings.backend if set, else cuda on GPU pods and cpu (the native kernels) elsewhere. */}}
{{- define "gguf-serve.backend" -}}
{{- default (ternary "cuda" "cpu" .Values.gpu.enabled) .Values.settings.backend }}
{{- end }}

{{/* The server's drain time in whole seconds (its default is 30). */}}
{{- define "gguf-serve.shutdownGrace" -}}
{{- $grace := 30 }}
{{- if hasKey .Values.settings "shutdown_grace_s" }}{{ $grace = .Values.settings.shutdown_grace_s }}{{ end }}
{{- $grace | float64 | ceil | int }}
{{- end }}

{{/* Pod grace period: longer than preStop sleep + drain, so SIGKILL never cuts a drain short. */}}
{{- define "gguf-serve.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "gguf-serve.shutdownGrace" .)) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 15 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds=%v must exceed preStopSleepSeconds + settings.shutdown_grace_s = %d" .Values.terminationGracePeriodSeconds $needed) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{- define "gguf-serve.modelClaimName" -}}
{{- default (printf "%s-models" (include "gguf-serve.fullname" .)) .Values.modelStorage.pvc.existingClaim }}
{{- end }}
