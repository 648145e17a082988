{{/*
One Deployment of a Switchyard service. Arguments (a dict):
  root, component, replicas, command (list), resources, port (optional),
  probe ("http" or "grpc", optional), env (list, optional), checksum
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
  replicas: {{ .replicas }}
  selector:
    matchLabels:
      {{- include "switchyard.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "switchyard.selector" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        checksum/settings: {{ include "switchyard.settings" $root | sha256sum }}
    spec:
      securityContext:
        {{- include "switchyard.podSecurityContext" $root | nindent 8 }}
      terminationGracePeriodSeconds: 60
      containers:
        - name: {{ .component }}
          image: {{ include "switchyard.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            - name: SWITCHYARD_CONFIG
              value: /etc/switchyard/switchyard.yaml
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if .port }}
          ports:
            - name: {{ if eq .probe "grpc" }}grpc{{ else }}http{{ end }}
              containerPort: {{ .port }}
          {{- end }}
          {{- if eq .probe "http" }}
          livenessProbe:
            httpGet: { path: /healthz, port: {{ .port }} }
            periodSeconds: 10
          readinessProbe:
            httpGet: { path: /readyz, port: {{ .port }} }
            periodSeconds: 5
          {{- else if eq .probe "grpc" }}
          livenessProbe:
            grpc: { port: {{ .port }} }
            periodSeconds: 10
          readinessProbe:
            grpc: { port: {{ .port }} }
            periodSeconds: 5
          {{- end }}
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
      volumes:
        - name: settings
          configMap:
            name: {{ include "switchyard.fullname" $root }}-settings
        - name: tmp
          emptyDir: {}
{{- end -}}
