{{/*
Names: `<release>-pgbouncer` always (the main chart and its NetworkPolicies rely on it),
whatever the release is called, unless fullnameOverride says otherwise.
*/}}
{{- define "pgbouncer.fullname" -}}
{{- default (printf "%s-pgbouncer" .Release.Name) .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgbouncer.selectorLabels" -}}
app.kubernetes.io/name: pgbouncer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgbouncer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "pgbouncer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: connection-pooler
app.kubernetes.io/part-of: skillcoach
{{- end -}}

{{- define "pgbouncer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pgbouncer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pgbouncer.secretName" -}}
{{- default (include "pgbouncer.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: the digest wins when set. */}}
{{- define "pgbouncer.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths and ports inside the pod. */}}
{{- define "pgbouncer.containerPort" -}}6432{{- end -}}
{{- define "pgbouncer.configDir" -}}/etc/pgbouncer/config{{- end -}}
{{- define "pgbouncer.authDir" -}}/etc/pgbouncer/auth{{- end -}}
{{- define "pgbouncer.secretDir" -}}/etc/pgbouncer/secret{{- end -}}
{{- define "pgbouncer.heartbeat" -}}/run/reloader/heartbeat{{- end -}}

{{/*
The server budget, as skillcoach_operator.sizing.plan_pools computes it:
default_pool_size = max(1, (maxConnections - serverReserve) // replicaCount - reservePoolSize).
*/}}
{{- define "pgbouncer.serverBudget" -}}
{{- sub (int .Values.postgresql.maxConnections) (int .Values.postgresql.serverReserve) -}}
{{- end -}}

{{- define "pgbouncer.defaultPoolSize" -}}
{{- $budget := int (include "pgbouncer.serverBudget" .) -}}
{{- max 1 (sub (div $budget (int .Values.replicaCount)) (int .Values.reservePoolSize)) -}}
{{- end -}}

{{- define "pgbouncer.maxDbConnections" -}}
{{- add (int (include "pgbouncer.defaultPoolSize" .)) (int .Values.reservePoolSize) -}}
{{- end -}}

{{/*
pgbouncer.ini: files/pgbouncer.ini.tmpl (the template the local stack renders with Python's
string.Template) with each `${name}` placeholder replaced; the values are formatted as
skillcoach_devstack.pgbouncer.render_config formats them (reserve_pool_timeout like
Python's `:g`), so both render the same text for the same inputs. A placeholder left over
fails the render, as a missing value raises in Python.
*/}}
{{- define "pgbouncer.ini" -}}
{{- $v := .Values -}}
{{- $ini := .Files.Get "files/pgbouncer.ini.tmpl" -}}
{{- if not $ini -}}
{{- fail "files/pgbouncer.ini.tmpl is missing from the chart" -}}
{{- end -}}
{{- $entries := printf "%s = host=%s port=%d dbname=%s" $v.postgresql.database $v.postgresql.host (int $v.postgresql.port) $v.postgresql.database -}}
{{- $subst := dict
  "database_entries" $entries
  "listen_addr" $v.listenAddress
  "listen_port" (include "pgbouncer.containerPort" .)
  "logfile" ""
  "pidfile" ""
  "auth_file" (printf "%s/userlist.txt" (include "pgbouncer.authDir" .))
  "admin_user" $v.auth.adminUser
  "default_pool_size" (include "pgbouncer.defaultPoolSize" .)
  "reserve_pool_size" (toString (int $v.reservePoolSize))
  "reserve_pool_timeout" (printf "%.6g" (float64 $v.reservePoolTimeout))
  "max_db_connections" (include "pgbouncer.maxDbConnections" .)
  "max_client_conn" (toString (int $v.maxClientConn))
  "query_wait_timeout" (toString (int $v.queryWaitTimeout))
-}}
{{- range $name, $value := $subst -}}
{{- $ini = replace (printf "${%s}" $name) $value $ini -}}
{{- end -}}
{{- if contains "${" $ini -}}
{{- fail (printf "files/pgbouncer.ini.tmpl has a placeholder the chart does not fill: %s" (regexFind "\\$\\{[^}]*\\}" $ini)) -}}
{{- end -}}
{{- $ini -}}
{{- end -}}

{{/*
The userlist and the password file, written by the init container from the mounted Secret:
`"user" "password"` with `"` doubled (as render_userlist does), and a libpq/lib-pq password
file line for the admin user with `\` and `:` escaped. Mode 0600: readable by the shared uid only.
*/}}
{{- define "pgbouncer.authScript" -}}
set -eu
umask 077
secret={{ include "pgbouncer.secretDir" . }}
auth={{ include "pgbouncer.authDir" . }}
app_pw=$(cat "$secret/{{ .Values.auth.secretKeys.appPassword }}")
admin_pw=$(cat "$secret/{{ .Values.auth.secretKeys.adminPassword }}")
[ -n "$app_pw" ] || { echo "the app password in the Secret is empty" >&2; exit 1; }
[ -n "$admin_pw" ] || { echo "the admin password in the Secret is empty" >&2; exit 1; }
ul() { printf '%s' "$1" | sed 's/"/""/g'; }
pp() { printf '%s' "$1" | sed 's/[\\:]/\\&/g'; }
printf '"%s" "%s"\n"%s" "%s"\n' {{ .Values.auth.appUser | quote }} "$(ul "$app_pw")" {{ .Values.auth.adminUser | quote }} "$(ul "$admin_pw")" > "$auth/userlist.txt.new"
printf '*:*:pgbouncer:%s:%s\n' {{ .Values.auth.adminUser | quote }} "$(pp "$admin_pw")" > "$auth/pgpass.new"
mv "$auth/userlist.txt.new" "$auth/userlist.txt"
mv "$auth/pgpass.new" "$auth/pgpass"
{{- end -}}

{{/* The admin console over loopback, password from PGPASSFILE. */}}
{{- define "pgbouncer.adminUrl" -}}
{{- printf "postgresql://%s@127.0.0.1:%s/pgbouncer?connect_timeout=3" (urlquery .Values.auth.adminUser) (include "pgbouncer.containerPort" .) -}}
{{- end -}}

{{- define "pgbouncer.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Refuse values that would render a broken or unsafe deployment, with a clear message. */}}
{{- define "pgbouncer.validateValues" -}}
{{- $v := .Values -}}
{{- if not $v.postgresql.host -}}
{{- fail "postgresql.host is required: the PostgreSQL server PgBouncer forwards to (a Service name or an address)" -}}
{{- end -}}
{{- if le (int $v.postgresql.maxConnections) (int $v.postgresql.serverReserve) -}}
{{- fail (printf "postgresql.maxConnections (%d) must exceed postgresql.serverReserve (%d)" (int $v.postgresql.maxConnections) (int $v.postgresql.serverReserve)) -}}
{{- end -}}
{{- $budget := int (include "pgbouncer.serverBudget" .) -}}
{{- $maxDb := int (include "pgbouncer.maxDbConnections" .) -}}
{{- if gt (mul (int $v.replicaCount) $maxDb) $budget -}}
{{- fail (printf "pool budget exceeded: replicaCount (%d) x max_db_connections (%d = default_pool_size %s + reservePoolSize %d) > postgresql.maxConnections - postgresql.serverReserve (%d); lower replicaCount or reservePoolSize, or raise maxConnections" (int $v.replicaCount) $maxDb (include "pgbouncer.defaultPoolSize" .) (int $v.reservePoolSize) $budget) -}}
{{- end -}}
{{- if and (not $v.auth.existingSecret) (not $v.auth.createSecret) -}}
{{- fail "auth.existingSecret is required: a Secret with the app and admin passwords (or auth.createSecret=true for a demo)" -}}
{{- end -}}
{{- if and $v.pdb.create (ge (int $v.pdb.minAvailable) (int $v.replicaCount)) -}}
{{- fail (printf "pdb.minAvailable (%d) must be below replicaCount (%d), or no node could ever be drained" (int $v.pdb.minAvailable) (int $v.replicaCount)) -}}
{{- end -}}
{{- if le (int $v.terminationGracePeriodSeconds) (add (int $v.preStopDelaySeconds) 5) -}}
{{- fail "terminationGracePeriodSeconds must exceed preStopDelaySeconds by more than 5 s, the time left for the safe shutdown" -}}
{{- end -}}
{{- if eq $v.auth.appUser $v.auth.adminUser -}}
{{- fail "auth.appUser and auth.adminUser must differ" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.postgresql.podSelector) (not $v.networkPolicy.postgresql.cidrs) -}}
{{- fail "networkPolicy.postgresql needs a podSelector or cidrs: PgBouncer may reach nothing else" -}}
{{- end -}}
{{- end -}}
