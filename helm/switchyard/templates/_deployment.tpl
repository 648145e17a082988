{{/*
One Deployment of a Switchyard service. Arguments (a dict):
  root, component, command (list), resources,
  replicas (omitted when autoscaled), port and portName (optional),
  extraPorts (list of { name, containerPort }, optional),
  secrets (list of { secretName, items }, optional), strategy (optional)
*/}}
{{- define "switchyard.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "switchyard.fullname" $root }}-{{ .component }}
  labels:
    {{- include "switchyard.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if hasKey . "replicas" }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "switchyard.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "switchyard.selector" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        checksum/settings: {{ include "switchyard.settings" $root | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      automountServiceAccountToken: false
      securityContext:
        {{- include "switchyard.podSecurityContext" $root | nindent 8 }}
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      {{- with include "switchyard.placement" $root }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "switchyard.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            - name: SWITCHYARD_CONFIG
              value: /etc/switchyard/switchyard.yaml
            - name: POD_NAME
              valueFrom: { fieldRef: { fieldPath: metadata.name } }
            - name: POD_NAMESPACE
              valueFrom: { fieldRef: { fieldPath: metadata.namespace } }
            {{- with $root.Values.telemetry.otlpEndpoint }}
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            - name: OTEL_TRACES_SAMPLER
              value: {{ $root.Values.telemetry.tracesSampler | quote }}
            - name: OTEL_TRACES_SAMPLER_ARG
              value: {{ $root.Values.telemetry.tracesSamplerArg | quote }}
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
          ports:
            {{- if .port }}
            - name: {{ .portName }}
              containerPort: {{ .port }}
            {{- end }}
            {{- range .extraPorts }}
            - name: {{ .name }}
              containerPort: {{ .containerPort }}
            {{- end }}
            - name: admin
              containerPort: {{ $root.Values.adminPort }}
          livenessProbe:
            httpGet: { path: /healthz, port: admin }
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet: { path: /readyz, port: admin }
            periodSeconds: 5
            failureThreshold: 2
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- include "switchyard.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: settings
              mountPath: /etc/switchyard
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if .secrets }}
            - name: secrets
              mountPath: /run/secrets/switchyard
              readOnly: true
            {{- end }}
            {{- if $root.Values.nats.credentials.secretName }}
            - name: nats-credentials
              mountPath: /etc/switchyard-nats
              readOnly: true
            {{- end }}
      volumes:
        - name: settings
          configMap:
            name: {{ include "switchyard.fullname" $root }}-settings
        - name: tmp
          emptyDir: {}
        {{- with .secrets }}
        - name: secrets
          projected:
            sources:
              {{- range . }}
              - secret:
                  name: {{ .secretName }}
                  {{- with .items }}
                  items:
                    {{- toYaml . | nindent 20 }}
                  {{- end }}
              {{- end }}
        {{- end }}
        {{- with $root.Values.nats.credentials }}
        {{- if .secretName }}
        - name: nats-credentials
          secret:
            secretName: {{ .secretName }}
            items:
              - { key: {{ .key }}, path: nats.creds }
        {{- end }}
        {{- end }}
{{- end -}}
