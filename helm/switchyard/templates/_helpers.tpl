{{- define "switchyard.fullname" -}}
{{- printf "%s-switchyard" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels selecting one component's pods. Arguments: root, component. */}}
{{- define "switchyard.selector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels selecting every pod of the release. */}}
{{- define "switchyard.releaseSelector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{- define "switchyard.natsUrl" -}}
{{ tpl .Values.nats.url . }}
{{- end -}}

{{- define "switchyard.controlUrl" -}}
{{ printf "http://%s-control:%d" (include "switchyard.fullname" .) (int .Values.control.port) }}
{{- end -}}

{{/*
The admin key of the catalog-apply Job: kept from the release's Secret on upgrade,
generated on install, and the same in every template of one render.
*/}}
{{- define "switchyard.applyKey" -}}
{{- if not (hasKey .Values.catalogApply "generatedKey") -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (printf "%s-catalog-apply" (include "switchyard.fullname" .)) -}}
{{- $key := printf "sy_%s" (randAlphaNum 40) -}}
{{- if and $secret (hasKey ($secret.data | default dict) "api-key") -}}
{{- $key = index $secret.data "api-key" | b64dec -}}
{{- end -}}
{{- $_ := set .Values.catalogApply "generatedKey" $key -}}
{{- end -}}
{{- .Values.catalogApply.generatedKey -}}
{{- end -}}

{{/* The settings file every service reads. */}}
{{- define "switchyard.settings" -}}
{{- $apiKeys := .Values.control.apiKeys | default list -}}
{{- if .Values.catalogApply.enabled -}}
{{- $apiKeys = append $apiKeys (dict "name" "helm-catalog-apply" "scope" "admin" "hash" (printf "sha256:%s" (include "switchyard.applyKey" . | sha256sum))) -}}
{{- end -}}
{{- $nats := dict "url" (include "switchyard.natsUrl" .) -}}
{{- if .Values.nats.credentials.secretName -}}
{{- $_ := set $nats "credentials_file" "/etc/switchyard-nats/nats.creds" -}}
{{- end -}}
{{- $base := dict
  "nats" $nats
  "topology" (dict "replicas" (int .Values.nats.streamReplicas))
  "telemetry" (dict "log_format" .Values.telemetry.logFormat "log_level" .Values.telemetry.logLevel)
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.adminPort)))
  "secrets" (dict "dir" "/run/secrets/switchyard")
  "ingest" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ingest.port)) "http" (.Values.ingest.http | default dict))
  "outbound" (dict "allow" (.Values.outbound.allow | default list) "deny" (.Values.outbound.deny | default list))
  "control" (dict "listen" (printf "0.0.0.0:%d" (int .Values.control.port)) "api_keys" $apiKeys)
-}}
{{- if .Values.control.console.enabled -}}
{{- $console := dict "listen" (printf "0.0.0.0:%d" (int .Values.control.console.port)) -}}
{{- with .Values.control.console.jaegerUrl -}}
{{- $_ := set $console "jaeger_url" . -}}
{{- end -}}
{{- $_ := set $base.control "console" $console -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.settings)) -}}
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
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Pod placement shared by every Deployment and the Job. */}}
{{- define "switchyard.placement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
