{{/*
Chart name, shortened to the 63 characters Kubernetes allows in a DNS label.
*/}}
{{- define "cumi-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or just the release name when it already contains the chart name.
Components append "-worker" / "-projector", so keep room for the suffix.
*/}}
{{- define "cumi-pipeline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label (never used in a selector).
*/}}
{{- define "cumi-pipeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource. Call with (dict "ctx" $ "component" "worker"); component may be empty.
*/}}
{{- define "cumi-pipeline.labels" -}}
helm.sh/chart: {{ include "cumi-pipeline.chart" .ctx }}
{{ include "cumi-pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: cumi-pipeline
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: name, instance and component only. They are immutable on a Deployment, so nothing
that changes between upgrades (version, chart) may appear here.
*/}}
{{- define "cumi-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cumi-pipeline.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Component resource name: <fullname>-<component>.
*/}}
{{- define "cumi-pipeline.componentName" -}}
{{- printf "%s-%s" (include "cumi-pipeline.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cumi-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cumi-pipeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "cumi-pipeline.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Names of the Secrets and ConfigMaps the pods read.
*/}}
{{- define "cumi-pipeline.credentialsSecretName" -}}
{{- default (printf "%s-cumi-credentials" (include "cumi-pipeline.fullname" .)) .Values.cumi.credentials.existingSecret }}
{{- end }}

{{/*
True ("true") when the workers read their mailboxes from the mounted list file (source `file`),
not from the registry topic: only then is there a mailbox ConfigMap, volume and checksum.
*/}}
{{- define "cumi-pipeline.mailboxFile" -}}
{{- if eq .Values.cumi.mailboxes.source "file" }}true{{ end }}
{{- end }}

{{- define "cumi-pipeline.mailboxesConfigMapName" -}}
{{- default (printf "%s-mailboxes" (include "cumi-pipeline.fullname" .)) .Values.cumi.mailboxes.existingConfigMap }}
{{- end }}

{{/*
True ("true") when the Kafka protocol uses TLS / SASL.
*/}}
{{- define "cumi-pipeline.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "cumi-pipeline.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "SASL_PLAINTEXT" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Fail early, with a readable message, on combinations the schema cannot express.
*/}}
{{- define "cumi-pipeline.validate" -}}
{{- if eq (int .Values.projector.readApi.port) (int .Values.httpPort) }}
{{- fail "projector.readApi.port must differ from httpPort: the read API has a listener of its own so that the NetworkPolicy, tokens and TLS can restrict it while /metrics and the probes stay open" }}
{{- end }}
{{- if and .Values.cumi.tls.ca.secretName .Values.cumi.tls.ca.configMapName }}
{{- fail "cumi.tls.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- $cred := .Values.cumi.credentials }}
{{- if and (eq $cred.provider "delegate") (not $cred.delegateTokenKey) (not $cred.delegateUser) }}
{{- fail "cumi.credentials.delegateUser (or delegateTokenKey) is required with provider delegate" }}
{{- end }}
{{- $mailboxes := .Values.cumi.mailboxes }}
{{- if and .Values.worker.enabled (include "cumi-pipeline.mailboxFile" .) (gt (int .Values.worker.replicaCount) 1) }}
{{- fail (printf "worker.replicaCount is %d with cumi.mailboxes.source file: every replica would watch every mailbox (duplicate events, that many times the Connection server's REST load); set cumi.mailboxes.source=registry so the workers share the mailboxes through the Kafka group, or keep worker.replicaCount at 1" (int .Values.worker.replicaCount)) }}
{{- end }}
{{- if and (eq $mailboxes.source "registry") (or $mailboxes.list $mailboxes.existingConfigMap) }}
{{- fail "cumi.mailboxes.list and cumi.mailboxes.existingConfigMap are not used with cumi.mailboxes.source registry: leave them empty and register the mailboxes with `ingest mailboxes import|add` (docs/operations.md)" }}
{{- end }}
{{- $group := .Values.worker.group }}
{{- /* the code's defaults (ingest/settings.py) stand in for nulls */}}
{{- $session := ternary 10000 $group.sessionTimeoutMs (kindIs "invalid" $group.sessionTimeoutMs) }}
{{- $heartbeat := ternary 1000 $group.heartbeatIntervalMs (kindIs "invalid" $group.heartbeatIntervalMs) }}
{{- if gt (mul (int64 $heartbeat) 3) (int64 $session) }}
{{- fail (printf "worker.group.heartbeatIntervalMs (%d) must be at most a third of worker.group.sessionTimeoutMs (%d)" (int64 $heartbeat) (int64 $session)) }}
{{- end }}
{{- range $component := list "worker" "projector" }}
{{- $values := index $.Values $component }}
{{- $shutdown := $values.shutdownTimeoutSeconds }}
{{- if and (not (kindIs "invalid" $shutdown)) (ge (float64 $shutdown) (float64 $values.terminationGracePeriodSeconds)) }}
{{- fail (printf "%s.shutdownTimeoutSeconds must be less than %s.terminationGracePeriodSeconds, or the shutdown is killed" $component $component) }}
{{- end }}
{{- end }}
{{- if and (include "cumi-pipeline.kafkaTls" .) .Values.kafka.tls.caKey (not .Values.kafka.tls.existingSecret) }}
{{- fail "kafka.tls.existingSecret is required with SSL / SASL_SSL when kafka.tls.caKey is set (set caKey to \"\" to use the system trust store)" }}
{{- end }}
{{- if and (or .Values.kafka.tls.certKey .Values.kafka.tls.keyKey) (not (and .Values.kafka.tls.certKey .Values.kafka.tls.keyKey)) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS)" }}
{{- end }}
{{- if and (include "cumi-pipeline.kafkaSasl" .) (not (and .Values.kafka.sasl.username .Values.kafka.sasl.existingSecret)) }}
{{- fail "kafka.sasl.username and kafka.sasl.existingSecret are required with SASL_PLAINTEXT / SASL_SSL" }}
{{- end }}
{{- with .Values.kafka.schemaRegistry }}
{{- if and (or .username .existingSecret .tls.caSecret) (not .url) }}
{{- fail "kafka.schemaRegistry.url is required with its username, existingSecret or tls.caSecret" }}
{{- end }}
{{- if ne (not .username) (not .existingSecret) }}
{{- fail "kafka.schemaRegistry.username and kafka.schemaRegistry.existingSecret go together (basic auth)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment shared by both processes: Kafka, topics, HTTP port, logging.
Only names the code reads (ingest/settings.py); null values are left to the code's defaults.
*/}}
{{- define "cumi-pipeline.commonEnv" -}}
{{ include "cumi-pipeline.kafkaEnv" . }}
- name: CUMI_METRICS_PORT
  value: {{ .Values.httpPort | quote }}
- name: CUMI_METRICS_HOST
  value: "0.0.0.0"
- name: CUMI_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/*
The Kafka settings (brokers, security, topic names, schema registry): both processes and the
topics hook Job.
*/}}
{{- define "cumi-pipeline.kafkaEnv" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "cumi-pipeline.kafkaTls" . }}
{{- if .Values.kafka.tls.caKey }}
- name: KAFKA_SSL_CA_FILE
  value: /etc/cumi-pipeline/kafka-tls/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.certKey }}
- name: KAFKA_SSL_CERT_FILE
  value: /etc/cumi-pipeline/kafka-tls/{{ .Values.kafka.tls.certKey }}
- name: KAFKA_SSL_KEY_FILE
  value: /etc/cumi-pipeline/kafka-tls/{{ .Values.kafka.tls.keyKey }}
{{- end }}
{{- end }}
{{- if include "cumi-pipeline.kafkaSasl" . }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/cumi-pipeline/kafka-sasl/{{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_TOPIC_PREFIX" .Values.kafka.topics.prefix) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_EVENTS_TOPIC" .Values.kafka.topics.events) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_DLQ_TOPIC" .Values.kafka.topics.deadLetter) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_STATE_TOPIC" .Values.kafka.topics.state) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_REGISTRY_TOPIC" .Values.kafka.topics.registry) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_CHECKPOINTS_TOPIC" .Values.kafka.topics.checkpoints) }}
{{- with .Values.kafka.schemaRegistry }}
{{- if .url }}
- name: KAFKA_SCHEMA_REGISTRY_URL
  value: {{ .url | quote }}
{{- if .username }}
- name: KAFKA_SCHEMA_REGISTRY_USER
  value: {{ .username | quote }}
- name: KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE
  value: /etc/cumi-pipeline/schema-registry-auth/{{ .passwordKey }}
{{- end }}
{{- if .tls.caSecret }}
- name: KAFKA_SCHEMA_REGISTRY_CA_FILE
  value: /etc/cumi-pipeline/schema-registry-ca/{{ .tls.caKey }}
{{- end }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_SCHEMA_REGISTRY_TIMEOUT_SECONDS" .timeoutSeconds) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The component's free-form `settings` map (names restricted by the schema). Call with the map.
*/}}
{{- define "cumi-pipeline.extraEnv" -}}
{{- range $name, $value := . }}
{{- include "cumi-pipeline.optionalEnv" (list $name $value) }}
{{- end }}
{{- end }}

{{/*
Environment of the ingest worker only: the Connection server, credentials and mailboxes (the list
file, or the registry and the workers' group).
*/}}
{{- define "cumi-pipeline.workerEnv" -}}
- name: CUMI_SERVER_URL
  value: {{ .Values.cumi.serverUrl | quote }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_COMETD_URL" .Values.cumi.cometdUrl) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_SERVER_NAME" .Values.cumi.serverName) }}
- name: CUMI_TLS_VERIFY
  value: {{ .Values.cumi.tls.verify | quote }}
{{- if or .Values.cumi.tls.ca.secretName .Values.cumi.tls.ca.configMapName }}
- name: CUMI_TLS_CA_FILE
  value: /etc/cumi-pipeline/cumi-ca/{{ .Values.cumi.tls.ca.key }}
{{- end }}
- name: CUMI_CREDENTIALS_PROVIDER
  value: {{ .Values.cumi.credentials.provider | quote }}
{{- if eq .Values.cumi.credentials.provider "file" }}
- name: CUMI_CREDENTIALS_FILE
  value: /etc/cumi-pipeline/credentials/{{ .Values.cumi.credentials.fileKey }}
{{- else if eq .Values.cumi.credentials.provider "directory" }}
- name: CUMI_CREDENTIALS_DIR
  value: /etc/cumi-pipeline/credentials
{{- else if .Values.cumi.credentials.delegateTokenKey }}
- name: CUMI_DELEGATE_TOKEN_FILE
  value: /etc/cumi-pipeline/credentials/{{ .Values.cumi.credentials.delegateTokenKey }}
{{- else }}
- name: CUMI_DELEGATE_USER
  value: {{ .Values.cumi.credentials.delegateUser | quote }}
- name: CUMI_DELEGATE_PASSWORD_FILE
  value: /etc/cumi-pipeline/credentials/{{ .Values.cumi.credentials.delegatePasswordKey }}
{{- end }}
{{- if include "cumi-pipeline.mailboxFile" . }}
- name: CUMI_MAILBOXES_FILE
  value: /etc/cumi-pipeline/mailboxes/{{ .Values.cumi.mailboxes.key }}
{{- else }}
- name: CUMI_MAILBOX_SOURCE
  value: "registry"
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_WORKER_GROUP" .Values.worker.group.id) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_WORKER_SESSION_TIMEOUT_MS" .Values.worker.group.sessionTimeoutMs) }}
{{- include "cumi-pipeline.optionalEnv" (list "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS" .Values.worker.group.heartbeatIntervalMs) }}
{{- end }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_EVENT_TIME_ZONE" .Values.cumi.eventTimeZone) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_SERVER_TIME_ZONE" .Values.cumi.serverTimeZone) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_REST_CONCURRENCY" .Values.cumi.restConcurrency) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_REST_TIMEOUT_SECONDS" .Values.cumi.restTimeoutSeconds) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_STALL_TIMEOUT_SECONDS" .Values.cumi.stallTimeoutSeconds) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_QUEUE_SIZE" .Values.cumi.queueSize) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_COMET_TRANSPORT" .Values.cumi.cometTransport) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_SHUTDOWN_TIMEOUT_SECONDS" .Values.worker.shutdownTimeoutSeconds) }}
{{- end }}

{{/*
Environment of the projector only.
*/}}
{{- define "cumi-pipeline.projectorEnv" -}}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_SHUTDOWN_TIMEOUT_SECONDS" .Values.projector.shutdownTimeoutSeconds) }}
{{- with .Values.projector.readApi }}
- name: CUMI_READ_API_PORT
  value: {{ .port | quote }}
{{- if .auth.existingSecret }}
- name: CUMI_READ_API_TOKEN_FILE
  value: /etc/cumi-pipeline/read-api-auth/{{ .auth.tokenKey }}
{{- end }}
{{- if .tls.existingSecret }}
- name: CUMI_READ_API_TLS_CERT_FILE
  value: /etc/cumi-pipeline/read-api-tls/{{ .tls.certKey }}
- name: CUMI_READ_API_TLS_KEY_FILE
  value: /etc/cumi-pipeline/read-api-tls/{{ .tls.keyKey }}
{{- if .tls.clientCaKey }}
- name: CUMI_READ_API_TLS_CLIENT_CA_FILE
  value: /etc/cumi-pipeline/read-api-tls/{{ .tls.clientCaKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The projector's read API Secrets (token file, TLS files) as volumes, and their mounts.
*/}}
{{- define "cumi-pipeline.readApiVolumes" -}}
{{- with .Values.projector.readApi }}
{{- if .auth.existingSecret }}
- name: read-api-auth
  secret:
    secretName: {{ .auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .auth.tokenKey }}
        path: {{ .auth.tokenKey }}
{{- end }}
{{- if .tls.existingSecret }}
- name: read-api-tls
  secret:
    secretName: {{ .tls.existingSecret }}
    defaultMode: 0440
    items:
      {{- range compact (list .tls.certKey .tls.keyKey .tls.clientCaKey) }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cumi-pipeline.readApiVolumeMounts" -}}
{{- if .Values.projector.readApi.auth.existingSecret }}
- name: read-api-auth
  mountPath: /etc/cumi-pipeline/read-api-auth
  readOnly: true
{{- end }}
{{- if .Values.projector.readApi.tls.existingSecret }}
- name: read-api-tls
  mountPath: /etc/cumi-pipeline/read-api-tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Environment of the KPI consumer only.
*/}}
{{- define "cumi-pipeline.kpisEnv" -}}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_KPIS_URGENT_THRESHOLDS" .Values.kpis.urgentThresholds) }}
{{- include "cumi-pipeline.optionalEnv" (list "CUMI_SHUTDOWN_TIMEOUT_SECONDS" .Values.kpis.shutdownTimeoutSeconds) }}
{{- end }}

{{/*
One env entry, only when the value is set (not null). Call with (list "NAME" value).
*/}}
{{- define "cumi-pipeline.optionalEnv" -}}
{{- $value := index . 1 }}
{{- if not (kindIs "invalid" $value) }}
{{- /* YAML integers arrive as float64: print 1000000, not 1e+06 */}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
- name: {{ index . 0 }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
Kafka and schema registry Secret volumes and mounts, shared by both Deployments.
*/}}
{{- define "cumi-pipeline.kafkaVolumes" -}}
{{- if and (include "cumi-pipeline.kafkaTls" .) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if include "cumi-pipeline.kafkaSasl" . }}
- name: kafka-sasl
  secret:
    secretName: {{ .Values.kafka.sasl.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.sasl.passwordKey }}
        path: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- with .Values.kafka.schemaRegistry }}
{{- if and .url .username }}
- name: schema-registry-auth
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .passwordKey }}
        path: {{ .passwordKey }}
{{- end }}
{{- if and .url .tls.caSecret }}
- name: schema-registry-ca
  secret:
    secretName: {{ .tls.caSecret }}
    defaultMode: 0440
    items:
      - key: {{ .tls.caKey }}
        path: {{ .tls.caKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cumi-pipeline.kafkaVolumeMounts" -}}
{{- if and (include "cumi-pipeline.kafkaTls" .) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/cumi-pipeline/kafka-tls
  readOnly: true
{{- end }}
{{- if include "cumi-pipeline.kafkaSasl" . }}
- name: kafka-sasl
  mountPath: /etc/cumi-pipeline/kafka-sasl
  readOnly: true
{{- end }}
{{- with .Values.kafka.schemaRegistry }}
{{- if and .url .username }}
- name: schema-registry-auth
  mountPath: /etc/cumi-pipeline/schema-registry-auth
  readOnly: true
{{- end }}
{{- if and .url .tls.caSecret }}
- name: schema-registry-ca
  mountPath: /etc/cumi-pipeline/schema-registry-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/*
HTTP probes on the health endpoints. Call with (dict "probes" .Values.worker.probes).
*/}}
{{- define "cumi-pipeline.probes" -}}
startupProbe:
  httpGet:
    path: /healthz/live
    port: http
  {{- toYaml .probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz/live
    port: http
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /healthz/ready
    port: http
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end }}
