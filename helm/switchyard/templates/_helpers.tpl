{{- define "switchyard.fullname" -}}
{{- printf "%s-switchyard" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.selector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchyard.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{/* The settings file every service reads. */}}
{{- define "switchyard.settings" -}}
{{- $base := dict "nats" (dict "url" .Values.nats.url) "telemetry" (dict "log_format" .Values.logFormat) "ingest" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ingest.port))) "control" (dict "listen" (printf "0.0.0.0:%d" (int .Values.control.port))) -}}
{{- toYaml (mustMergeOverwrite $base .Values.settings) -}}
{{- end -}}

{{/* The catalog document: .Values.catalog plus the providers without their deployment settings. */}}
{{- define "switchyard.catalog" -}}
{{- $providers := list -}}
{{- range .Values.providers -}}
{{- $providers = append $providers (omit . "deployment") -}}
{{- end -}}
{{- toYaml (merge (dict "providers" $providers) .Values.catalog) -}}
{{- end -}}

{{- define "switchyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "switchyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
