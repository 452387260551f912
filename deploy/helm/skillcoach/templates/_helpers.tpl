{{/* vim: set filetype=mustache: */}}

{{/* ---- Names and labels ------------------------------------------------------------ */}}

{{- define "skillcoach.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource, truncated to a DNS label's length. */}}
{{- define "skillcoach.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* fullname plus a suffix, the whole still a DNS label. Usage: include "skillcoach.fullname.suffixed" (list . "pool") */}}
{{- define "skillcoach.fullname.suffixed" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "skillcoach.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "skillcoach.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skillcoach.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skillcoach.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "skillcoach.labels" -}}
helm.sh/chart: {{ include "skillcoach.chart" . }}
{{ include "skillcoach.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skillcoach
{{- end -}}

{{/* The API pods: the Deployment's selector, the Service's, the PDB's and the ServiceMonitor's. */}}
{{- define "skillcoach.api.selectorLabels" -}}
{{ include "skillcoach.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end -}}

{{/* PgBouncer's NetworkPolicy admits only pods carrying this label. */}}
{{- define "skillcoach.dbClientLabel" -}}
skillcoach.io/db-client: "true"
{{- end -}}

{{/* Pods that may reach the API port when networkPolicy.allowExternal is false. */}}
{{- define "skillcoach.clientLabelKey" -}}
{{- printf "%s-client" (include "skillcoach.fullname" .) -}}
{{- end -}}

{{- define "skillcoach.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skillcoach.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.operator.fullname" -}}
{{- include "skillcoach.fullname.suffixed" (list . "operator") -}}
{{- end -}}

{{- define "skillcoach.pool.configMapName" -}}
{{- include "skillcoach.fullname.suffixed" (list . "pool") -}}
{{- end -}}

{{/* The subchart's Service: the standard fullname of a chart named pgbouncer. */}}
{{- define "skillcoach.pgbouncer.fullname" -}}
{{- if .Values.pgbouncer.fullnameOverride -}}
{{- .Values.pgbouncer.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "pgbouncer" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pgbouncer" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* PgBouncer's pods, as the subchart labels them. */}}
{{- define "skillcoach.pgbouncer.selectorLabels" -}}
app.kubernetes.io/name: pgbouncer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* ---- Images --------------------------------------------------------------------- */}}

{{/* registry/repository, then @digest when pinned by digest, else :tag (default appVersion). */}}
{{- define "skillcoach.imageRef" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- $repo := ternary (printf "%s/%s" $image.registry $image.repository) $image.repository (ne $image.registry "") -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repo $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.image" -}}
{{- include "skillcoach.imageRef" (list .Values.image .Chart) -}}
{{- end -}}

{{- define "skillcoach.operator.image" -}}
{{- include "skillcoach.imageRef" (list .Values.operator.image .Chart) -}}
{{- end -}}

{{/* checkov's skips for an image pinned by tag only: written next to the resource, with the reason. */}}
{{- define "skillcoach.imageSkips" -}}
{{- if not .digest -}}
checkov.io/skip1: CKV_K8S_43=The image is pinned by an immutable release tag (the chart's appVersion); set the digest value to pin it by digest
{{- if ne .pullPolicy "Always" }}
checkov.io/skip2: CKV_K8S_15=A release tag is immutable, so IfNotPresent pulls the same image; a digest pin passes this check
{{- end }}
{{- end -}}
{{- end -}}

{{/* ---- Settings shared by the API, the jobs and the test pod ----------------------- */}}

{{- define "skillcoach.database.host" -}}
{{- default (include "skillcoach.pgbouncer.fullname" .) .Values.database.host -}}
{{- end -}}

{{/* Not secret: the password comes from SKILLCOACH_DATABASE_PASSWORD. */}}
{{- define "skillcoach.database.url" -}}
{{- printf "postgresql://%s@%s:%d/%s" .Values.database.user (include "skillcoach.database.host" .) (int .Values.pgbouncer.service.port) .Values.pgbouncer.postgresql.database -}}
{{- end -}}

{{- define "skillcoach.redis.url" -}}
{{- $scheme := ternary "rediss" "redis" .Values.redis.tls.enabled -}}
{{- if .Values.redis.cluster -}}
{{- printf "%s+cluster://%s" $scheme (join "," .Values.redis.endpoints) -}}
{{- else -}}
{{- printf "%s://%s/0" $scheme (first .Values.redis.endpoints) -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.redis.caDir" -}}/etc/skillcoach/redis-ca{{- end -}}
{{- define "skillcoach.pool.dir" -}}/etc/skillcoach/pool{{- end -}}
{{- define "skillcoach.pool.fileName" -}}pool.json{{- end -}}

{{- define "skillcoach.secretName" -}}
{{- include "skillcoach.fullname.suffixed" (list . "demo") -}}
{{- end -}}

{{/* The Secret and key of the database password: the demo Secret, database.existingSecret,
or else the Secret PgBouncer builds its userlist from, so both sides share one password. */}}
{{- define "skillcoach.database.secretName" -}}
{{- if .Values.demoSecret.enabled -}}
{{- include "skillcoach.secretName" . -}}
{{- else -}}
{{- default (dig "auth" "existingSecret" "" .Values.pgbouncer) .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.database.secretKey" -}}
{{- if .Values.demoSecret.enabled -}}
database-password
{{- else if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretPasswordKey -}}
{{- else -}}
{{- dig "auth" "secretKeys" "appPassword" "app-password" .Values.pgbouncer -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.env.databasePassword" -}}
- name: SKILLCOACH_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "skillcoach.database.secretName" . }}
      key: {{ include "skillcoach.database.secretKey" . }}
{{- end -}}

{{/* Variables from Secrets (the service reads settings only from its environment). */}}
{{- define "skillcoach.env.secrets" -}}
{{ include "skillcoach.env.databasePassword" . }}
{{- if and .Values.cache.enabled .Values.demoSecret.enabled .Values.demoSecret.redisPassword }}
- name: SKILLCOACH_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "skillcoach.secretName" . }}
      key: redis-password
{{- else if and .Values.cache.enabled (not .Values.demoSecret.enabled) .Values.redis.existingSecret }}
- name: SKILLCOACH_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretPasswordKey }}
{{- end }}
{{- end -}}

{{/* Every non-secret setting, as a map: the settings ConfigMap of the API, and the env of the migration hook, which may run before this release's ConfigMap exists or is updated. */}}
{{- define "skillcoach.settings" -}}
{{- $s := dict
  "SKILLCOACH_ENVIRONMENT" .Values.config.environment
  "SKILLCOACH_LOG_LEVEL" .Values.config.logLevel
  "SKILLCOACH_HOST" "0.0.0.0"
  "SKILLCOACH_PORT" "8000"
  "SKILLCOACH_METRICS_PORT" "9000"
  "SKILLCOACH_DATABASE_URL" (include "skillcoach.database.url" .)
  "SKILLCOACH_POOL_FILE" (printf "%s/%s" (include "skillcoach.pool.dir" .) (include "skillcoach.pool.fileName" .))
  "SKILLCOACH_POOL_TIMEOUT" (toString .Values.poolBudget.poolTimeout)
  "SKILLCOACH_POOL_RECYCLE" (toString (int .Values.poolBudget.poolRecycle))
  "SKILLCOACH_QUEUE_ALLOWANCE" (toString (int .Values.config.queueAllowance))
  "SKILLCOACH_REQUEST_TIMEOUT" (toString .Values.config.requestTimeout)
  "SKILLCOACH_CACHE_ENABLED" (toString .Values.cache.enabled)
  "SKILLCOACH_ACCESS_LOG" (toString .Values.config.accessLog)
  "SKILLCOACH_API_KEY_CACHE_SECONDS" (toString .Values.config.apiKeyCacheSeconds)
  "SKILLCOACH_RATE_LIMIT_PER_KEY" (toString .Values.config.rateLimit.perKey)
  "SKILLCOACH_RATE_LIMIT_PER_CLIENT" (toString .Values.config.rateLimit.perClient)
  "SKILLCOACH_RATE_LIMIT_WINDOW_SECONDS" (toString .Values.config.rateLimit.windowSeconds)
-}}
{{- if .Values.cache.enabled -}}
{{- $_ := set $s "SKILLCOACH_REDIS_URL" (include "skillcoach.redis.url" .) -}}
{{- if .Values.redis.username -}}
{{- $_ := set $s "SKILLCOACH_REDIS_USERNAME" .Values.redis.username -}}
{{- end -}}
{{- if and .Values.redis.tls.enabled .Values.redis.tls.caSecret -}}
{{- $_ := set $s "SKILLCOACH_REDIS_TLS_CA_FILE" (printf "%s/%s" (include "skillcoach.redis.caDir" .) .Values.redis.tls.caSecretKey) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := .Values.config.extra -}}
{{- $_ := set $s $k (toString $v) -}}
{{- end -}}
{{- toYaml $s -}}
{{- end -}}

{{/* Pod-level security context of every pod of the chart. */}}
{{- define "skillcoach.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context of every container of the chart. */}}
{{- define "skillcoach.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ---- NetworkPolicy rules shared by the policies ---------------------------------- */}}

{{- /* Egress to PgBouncer: the subchart's pods by label and named port; an external one by port. */}}
{{- define "skillcoach.networkPolicy.toPgbouncer" -}}
- ports:
    - protocol: TCP
      port: {{ ternary "pgbouncer" (int .Values.pgbouncer.service.port) .Values.pgbouncer.enabled }}
  {{- if .Values.pgbouncer.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "skillcoach.pgbouncer.selectorLabels" . | nindent 10 }}
  {{- end }}
{{- end }}
{{- define "skillcoach.networkPolicy.toDns" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}

{{/* ---- The pool budget: skillcoach_operator.sizing.plan_pools, in template form ----
Every figure below is an integer rendered as text; callers convert with int.
Client side: PgBouncer's client budget must still hold when the PDB lets all but
pdb.minAvailable PgBouncer pods go, and the API's static pool must hold at the largest
size the HPA may reach, plus the rollout surge. */}}

{{/* R: the most API pods outside a rollout. */}}
{{- define "skillcoach.pool.replicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- int .Values.autoscaling.maxReplicas -}}
{{- else -}}
{{- int .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* S: the extra pods of a rollout. */}}
{{- define "skillcoach.pool.surge" -}}
{{- int .Values.updateStrategy.maxSurge -}}
{{- end -}}

{{/* Budget.max_client_conn: what the PgBouncer pods left by their PDB accept. */}}
{{- define "skillcoach.pool.maxClientConn" -}}
{{- mul (int .Values.pgbouncer.maxClientConn) (int .Values.pgbouncer.pdb.minAvailable) -}}
{{- end -}}

{{/* max_client_conn - client_reserve */}}
{{- define "skillcoach.pool.clientBudget" -}}
{{- sub (int (include "skillcoach.pool.maxClientConn" .)) (int .Values.poolBudget.clientReserve) -}}
{{- end -}}

{{/* clamp(floor(client budget / (R + S)), minPerPod, maxPerPod) */}}
{{- define "skillcoach.pool.perPod" -}}
{{- $pods := add (int (include "skillcoach.pool.replicas" .)) (int (include "skillcoach.pool.surge" .)) -}}
{{- $raw := div (int (include "skillcoach.pool.clientBudget" .)) $pods -}}
{{- min (int .Values.poolBudget.maxPerPod) (max (int .Values.poolBudget.minPerPod) $raw) -}}
{{- end -}}

{{/* "true" when per_pod x (R + S) exceeds the client budget. */}}
{{- define "skillcoach.pool.oversubscribed" -}}
{{- $pods := add (int (include "skillcoach.pool.replicas" .)) (int (include "skillcoach.pool.surge" .)) -}}
{{- gt (mul (int (include "skillcoach.pool.perPod" .)) $pods) (int (include "skillcoach.pool.clientBudget" .)) -}}
{{- end -}}

{{/* max_connections - server_reserve */}}
{{- define "skillcoach.pool.serverBudget" -}}
{{- sub (int .Values.pgbouncer.postgresql.maxConnections) (int .Values.pgbouncer.postgresql.serverReserve) -}}
{{- end -}}

{{/* PgBouncer's default_pool_size: the server budget per PgBouncer pod less its reserve pool, at least one. */}}
{{- define "skillcoach.pool.pgbouncerDefaultPoolSize" -}}
{{- max 1 (sub (div (int (include "skillcoach.pool.serverBudget" .)) (int .Values.pgbouncer.replicaCount)) (int .Values.pgbouncer.reservePoolSize)) -}}
{{- end -}}

{{/* The pool file (skillcoach.data.pool_file): steady pools, so no overflow. The
generation is the release revision: every upgrade is newer than what the pods applied. */}}
{{- define "skillcoach.pool.file" -}}
{{- $file := dict
  "pool_size" (int (include "skillcoach.pool.perPod" .))
  "max_overflow" 0
  "pool_timeout" .Values.poolBudget.poolTimeout
  "pool_recycle" (int .Values.poolBudget.poolRecycle)
  "generation" (int .Release.Revision)
  "client_budget" (int (include "skillcoach.pool.clientBudget" .))
-}}
{{- toJson $file -}}
{{- end -}}

{{/* ---- Cross-field validation: every message names the values to change ---------- */}}

{{- define "skillcoach.validateValues.poolBudget" -}}
{{- $maxClientConn := int (include "skillcoach.pool.maxClientConn" .) -}}
{{- $reserve := int .Values.poolBudget.clientReserve -}}
{{- if le $maxClientConn $reserve -}}
pool budget: PgBouncer's client connections left by its PDB, pgbouncer.maxClientConn ({{ .Values.pgbouncer.maxClientConn }}) x pgbouncer.pdb.minAvailable ({{ .Values.pgbouncer.pdb.minAvailable }}) = {{ $maxClientConn }}, must exceed poolBudget.clientReserve ({{ $reserve }}). Raise pgbouncer.maxClientConn or pgbouncer.pdb.minAvailable, or lower poolBudget.clientReserve.
{{- else if gt (int .Values.poolBudget.minPerPod) (int .Values.poolBudget.maxPerPod) -}}
pool budget: poolBudget.minPerPod ({{ .Values.poolBudget.minPerPod }}) must not exceed poolBudget.maxPerPod ({{ .Values.poolBudget.maxPerPod }}).
{{- else if eq (include "skillcoach.pool.oversubscribed" .) "true" -}}
{{- $replicas := int (include "skillcoach.pool.replicas" .) -}}
{{- $surge := int (include "skillcoach.pool.surge" .) -}}
{{- $perPod := int (include "skillcoach.pool.perPod" .) -}}
{{- $budget := int (include "skillcoach.pool.clientBudget" .) -}}
{{- $replicasKey := ternary "autoscaling.maxReplicas" "replicaCount" .Values.autoscaling.enabled -}}
{{- $most := sub (div $budget (int .Values.poolBudget.minPerPod)) $surge -}}
pool budget exceeded: {{ $replicasKey }} ({{ $replicas }}) + updateStrategy.maxSurge ({{ $surge }}) API pods x poolBudget.minPerPod ({{ $perPod }}) connections = {{ mul $perPod (add $replicas $surge) }} client connections, but PgBouncer's client budget is pgbouncer.maxClientConn ({{ .Values.pgbouncer.maxClientConn }}) x pgbouncer.pdb.minAvailable ({{ .Values.pgbouncer.pdb.minAvailable }}) - poolBudget.clientReserve ({{ $reserve }}) = {{ $budget }}. Lower {{ $replicasKey }}{{ if ge $most 1 }} (at most {{ $most }} here){{ end }} or updateStrategy.maxSurge, raise pgbouncer.maxClientConn or pgbouncer.pdb.minAvailable (with pgbouncer.replicaCount), or lower poolBudget.minPerPod or poolBudget.clientReserve.
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.serverPool" -}}
{{- $server := int (include "skillcoach.pool.serverBudget" .) -}}
{{- if le $server 0 -}}
pool budget (PostgreSQL side): pgbouncer.postgresql.maxConnections ({{ .Values.pgbouncer.postgresql.maxConnections }}) must exceed pgbouncer.postgresql.serverReserve ({{ .Values.pgbouncer.postgresql.serverReserve }}).
{{- else -}}
{{- $size := int (include "skillcoach.pool.pgbouncerDefaultPoolSize" .) -}}
{{- $replicas := int .Values.pgbouncer.replicaCount -}}
{{- $reservePool := int .Values.pgbouncer.reservePoolSize -}}
{{- $total := mul $replicas (add $size $reservePool) -}}
{{- if gt $total $server -}}
pool budget (PostgreSQL side): pgbouncer.replicaCount ({{ $replicas }}) x (default_pool_size {{ $size }} + pgbouncer.reservePoolSize {{ $reservePool }}) = {{ $total }} server connections, but pgbouncer.postgresql.maxConnections ({{ .Values.pgbouncer.postgresql.maxConnections }}) - pgbouncer.postgresql.serverReserve ({{ .Values.pgbouncer.postgresql.serverReserve }}) = {{ $server }}. Lower pgbouncer.replicaCount or pgbouncer.reservePoolSize, or raise pgbouncer.postgresql.maxConnections.
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.pgbouncerPdb" -}}
{{- if ge (int .Values.pgbouncer.pdb.minAvailable) (int .Values.pgbouncer.replicaCount) -}}
pgbouncer.pdb.minAvailable ({{ .Values.pgbouncer.pdb.minAvailable }}) must be below pgbouncer.replicaCount ({{ .Values.pgbouncer.replicaCount }}), or no node could ever be drained; the client budget counts only the minAvailable PgBouncer pods.
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.autoscaling" -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
autoscaling.minReplicas ({{ .Values.autoscaling.minReplicas }}) must not exceed autoscaling.maxReplicas ({{ .Values.autoscaling.maxReplicas }}).
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.rollout" -}}
{{- if and (eq (int .Values.updateStrategy.maxSurge) 0) (eq (int .Values.updateStrategy.maxUnavailable) 0) -}}
updateStrategy.maxSurge and updateStrategy.maxUnavailable cannot both be 0: a rollout could never start. Raise one of them.
{{- end -}}
{{- end -}}

{{/* uvicorn's graceful shutdown (timeout_graceful_shutdown in skillcoach.api.server) plus a margin for the process to exit. */}}
{{- define "skillcoach.drainSeconds" -}}15{{- end -}}

{{- define "skillcoach.validateValues.drain" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "skillcoach.drainSeconds" .)) -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) $needed -}}
terminationGracePeriodSeconds ({{ .Values.terminationGracePeriodSeconds }}) must be at least preStopSleepSeconds ({{ .Values.preStopSleepSeconds }}) + {{ include "skillcoach.drainSeconds" . }} s of drain = {{ $needed }}. Raise terminationGracePeriodSeconds or lower preStopSleepSeconds.
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.secrets" -}}
{{- if .Values.demoSecret.enabled -}}
{{- if not .Values.demoSecret.databasePassword -}}
demoSecret.enabled needs demoSecret.databasePassword; or set demoSecret.enabled=false and name an existing Secret in database.existingSecret.
{{- else if and .Values.pgbouncer.enabled (dig "auth" "appPassword" "" .Values.pgbouncer) (ne (dig "auth" "appPassword" "" .Values.pgbouncer) .Values.demoSecret.databasePassword) -}}
demoSecret.databasePassword differs from pgbouncer.auth.appPassword: PgBouncer would refuse the API. Set both to the same password.
{{- end -}}
{{- else if not (include "skillcoach.database.secretName" .) -}}
No Secret holds the database password: set database.existingSecret (or pgbouncer.auth.existingSecret, which the API then shares with PgBouncer), or for demos only demoSecret.enabled=true with demoSecret.databasePassword.
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.databaseUser" -}}
{{- $appUser := dig "auth" "appUser" "" .Values.pgbouncer -}}
{{- if and .Values.pgbouncer.enabled $appUser (ne $appUser .Values.database.user) -}}
database.user ({{ .Values.database.user }}) differs from pgbouncer.auth.appUser ({{ $appUser }}), the only user PgBouncer lets in. Set both to the same role.
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.redis" -}}
{{- if .Values.cache.enabled -}}
{{- if and (not .Values.redis.cluster) (ne (len .Values.redis.endpoints) 1) -}}
redis.cluster=false (a standalone Redis) needs exactly one entry in redis.endpoints, not {{ len .Values.redis.endpoints }}.
{{- else if and .Values.redis.tls.caSecret (not .Values.redis.tls.enabled) -}}
redis.tls.caSecret is set but redis.tls.enabled is false: enable TLS or clear redis.tls.caSecret.
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.database" -}}
{{- if and (not .Values.pgbouncer.enabled) (not .Values.database.host) -}}
pgbouncer.enabled is false: set database.host to the PgBouncer the API should use (the API never connects to PostgreSQL directly).
{{- end -}}
{{- end -}}

{{- define "skillcoach.validateValues.autoscalingMetrics" -}}
{{- if and .Values.autoscaling.enabled (not .Values.resources.requests.cpu) -}}
autoscaling.enabled scales on CPU utilisation, which needs resources.requests.cpu.
{{- end -}}
{{- end -}}

{{/* Settings the chart derives from other values: config.extra may not override them. */}}
{{- define "skillcoach.validateValues.configExtra" -}}
{{- $derived := dict
  "SKILLCOACH_ENVIRONMENT" "config.environment"
  "SKILLCOACH_LOG_LEVEL" "config.logLevel"
  "SKILLCOACH_QUEUE_ALLOWANCE" "config.queueAllowance"
  "SKILLCOACH_REQUEST_TIMEOUT" "config.requestTimeout"
  "SKILLCOACH_HOST" "the chart (the pod's address)"
  "SKILLCOACH_PORT" "the chart (the container's http port)"
  "SKILLCOACH_METRICS_PORT" "the chart (the container's metrics port)"
  "SKILLCOACH_DATABASE_URL" "database.user, database.host and pgbouncer.*"
  "SKILLCOACH_DATABASE_PASSWORD" "database.existingSecret"
  "SKILLCOACH_POOL_FILE" "the chart (the mounted pool file)"
  "SKILLCOACH_POOL_SIZE" "the pool file (poolBudget.*)"
  "SKILLCOACH_MAX_OVERFLOW" "the pool file (poolBudget.*)"
  "SKILLCOACH_POOL_TIMEOUT" "poolBudget.poolTimeout"
  "SKILLCOACH_POOL_RECYCLE" "poolBudget.poolRecycle"
  "SKILLCOACH_CACHE_ENABLED" "cache.enabled"
  "SKILLCOACH_REDIS_URL" "redis.endpoints, redis.cluster and redis.tls.enabled"
  "SKILLCOACH_REDIS_USERNAME" "redis.username"
  "SKILLCOACH_REDIS_PASSWORD" "redis.existingSecret"
  "SKILLCOACH_REDIS_TLS_CA_FILE" "redis.tls.caSecret"
-}}
{{- $messages := list -}}
{{- range $key := keys .Values.config.extra | sortAlpha -}}
{{- if hasKey $derived $key -}}
{{- $messages = append $messages (printf "config.extra.%s: the chart sets this setting from %s; remove it from config.extra." $key (get $derived $key)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $messages -}}
{{- end -}}

{{/* One fail with every message. */}}
{{- define "skillcoach.validateValues" -}}
{{- $messages := list -}}
{{- range $check := list "poolBudget" "serverPool" "pgbouncerPdb" "autoscaling" "autoscalingMetrics" "rollout" "drain" "secrets" "databaseUser" "redis" "database" "configExtra" -}}
{{- $messages = append $messages (include (printf "skillcoach.validateValues.%s" $check) $) -}}
{{- end -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* The demo-data Job's environment: like the migration hook it reads no ConfigMap of the
release (hooks may run before or beside it), only the settings and the password Secret. */}}
{{- define "skillcoach.demoData.env" -}}
{{- range $name, $value := (include "skillcoach.settings" . | fromYaml) }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{ include "skillcoach.env.databasePassword" . }}
{{- end -}}

{{/* OpenTelemetry: the standard OTEL_* variables, with the pod's identity from the Downward
API (defined first: OTEL_RESOURCE_ATTRIBUTES refers to them). Nothing when tracing is off. */}}
{{- define "skillcoach.env.tracing" -}}
{{- if .Values.tracing.enabled }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_SERVICE_NAME
  value: skillcoach-api
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.tracing.samplingRatio | toString | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),k8s.node.name=$(NODE_NAME),service.version={{ .Chart.AppVersion }}"
{{- end }}
{{- end -}}

{{/* The collector's port, from tracing.endpoint (4318 when the URL names none). */}}
{{- define "skillcoach.tracing.port" -}}
{{- $host := (urlParse .Values.tracing.endpoint).host -}}
{{- if contains ":" $host -}}{{ last (splitList ":" $host) }}{{- else if hasPrefix "https" .Values.tracing.endpoint -}}443{{- else -}}80{{- end -}}
{{- end -}}
