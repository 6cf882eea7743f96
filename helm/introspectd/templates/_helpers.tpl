{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "introspectd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: the release name, followed by the chart name unless the
release name already contains it. Truncated to 63 characters (DNS label).
The headless Service appends "-headless", so the base is kept to 54.
*/}}
{{- define "introspectd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "introspectd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is
immutable), so nothing version-dependent goes here.
*/}}
{{- define "introspectd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "introspectd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels for every resource.
*/}}
{{- define "introspectd.labels" -}}
helm.sh/chart: {{ include "introspectd.chart" . }}
{{ include "introspectd.selectorLabels" . }}
app.kubernetes.io/version: {{ include "introspectd.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: introspectd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "introspectd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "introspectd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "introspectd.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
Full image reference; a digest pins the image.
*/}}
{{- define "introspectd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "introspectd.imageTag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "introspectd.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Where the service's configuration file is mounted.
*/}}
{{- define "introspectd.configPath" -}}
/etc/introspectd/config.yaml
{{- end }}

{{/*
"true" when the address (as in bindAddress) is a loopback one, else empty.
*/}}
{{- define "introspectd.loopback" -}}
{{- if or (hasPrefix "127." .) (eq . "::1") (eq . "[::1]") (eq . "localhost") }}true{{ end }}
{{- end }}

{{/*
The Secret holding the client CA bundle (mutual TLS).
*/}}
{{- define "introspectd.clientCASecretName" -}}
{{- default .Values.tls.secretName .Values.tls.clientCA.secretName }}
{{- end }}

{{/*
The configuration file: .Values.config with the keys the chart owns
(listen addresses from the ports, TLS file paths from the mounts) set on top.
Guards: secrets must not be written into the ConfigMap.
*/}}
{{- define "introspectd.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $server := deepCopy (get $config "server" | default dict) }}
{{- range $key := list "listen" "metrics_listen" "health_listen" "admin_listen" "tls" }}
{{- if hasKey $server $key }}
{{- fail (printf "config.server.%s is managed by the chart: set containerPorts/bindAddress/metrics.enabled/admin.*/tls.* instead" $key) }}
{{- end }}
{{- end }}
{{- $authed := hasKey $server "admin_auth" }}
{{- if and (get $server "admin") (not $authed) (not (include "introspectd.loopback" .Values.bindAddress)) }}
{{- fail "config.server.admin puts AdminService on the gRPC port, which the network reaches: set config.server.admin_auth, or use admin.enabled (a loopback admin port for kubectl port-forward)" }}
{{- end }}
{{- if .Values.admin.enabled }}
{{- if and (not $authed) (not (include "introspectd.loopback" .Values.admin.bindAddress)) }}
{{- fail (printf "admin.bindAddress %s is not a loopback address: set config.server.admin_auth (admin calls then need a token)" .Values.admin.bindAddress) }}
{{- end }}
{{- $_ := set $server "admin_listen" (printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port)) }}
{{- end }}
{{- $_ := set $server "listen" (printf "%s:%d" .Values.bindAddress (int .Values.containerPorts.grpc)) }}
{{- if .Values.metrics.enabled }}
{{- $_ := set $server "metrics_listen" (printf "%s:%d" .Values.bindAddress (int .Values.containerPorts.metrics)) }}
{{- else }}
{{- $_ := set $server "metrics_listen" "" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "cert_file" (printf "%s/%s" .Values.tls.mountPath .Values.tls.certKey) "key_file" (printf "%s/%s" .Values.tls.mountPath .Values.tls.keyKey) }}
{{- if .Values.tls.clientCA.enabled }}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" .Values.tls.clientCA.mountPath .Values.tls.clientCA.key) }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- $_ := set $server "health_listen" (printf "%s:%d" .Values.bindAddress (int .Values.containerPorts.health)) }}
{{- end }}
{{- $_ := set $config "server" $server }}
{{- if hasKey $config "shared_state" }}
{{- fail "config.shared_state is managed by the chart: set sharedState.* instead (it also opens the NetworkPolicy and mounts the password)" }}
{{- end }}
{{- with (include "introspectd.sharedState" . | fromYaml) }}
{{- $_ := set $config "shared_state" . }}
{{- end }}
{{- range $i, $tenant := (get $config "tenants" | default list) }}
{{- if not (kindIs "map" $tenant) }}
{{- fail (printf "config.tenants[%d] must be a map" $i) }}
{{- end }}
{{- if hasKey $tenant "hmac_secret" }}
{{- fail (printf "config.tenants[%d] (%v): put the HMAC secret in a Secret and name its variable in hmac_secret_env (see secretEnv), never in the ConfigMap" $i (get $tenant "id")) }}
{{- end }}
{{- $introspection := get $tenant "introspection" }}
{{- if and (kindIs "map" $introspection) (hasKey $introspection "client_secret") }}
{{- fail (printf "config.tenants[%d] (%v): put the client secret in a Secret and name its variable in introspection.client_secret_env (see secretEnv), never in the ConfigMap" $i (get $tenant "id")) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The shared_state section from sharedState.* (empty when off).
*/}}
{{- define "introspectd.sharedState" -}}
{{- $ss := .Values.sharedState }}
{{- if $ss.enabled }}
{{- if eq (empty $ss.url) (empty $ss.clusterNodes) }}
{{- fail "sharedState.enabled needs exactly one of sharedState.url and sharedState.clusterNodes" }}
{{- end }}
{{- $out := dict "key_prefix" $ss.keyPrefix "op_timeout" $ss.opTimeout "on_unavailable" $ss.onUnavailable }}
{{- if $ss.url }}
{{- $_ := set $out "redis_url" $ss.url }}
{{- else }}
{{- $_ := set $out "cluster_nodes" $ss.clusterNodes }}
{{- end }}
{{- if $ss.password.secretName }}
{{- $_ := set $out "redis_password_env" "REDIS_PASSWORD" }}
{{- end }}
{{- if $ss.integrityKey.secretName }}
{{- $_ := set $out "integrity_key_env" "SHARED_STATE_INTEGRITY_KEY" }}
{{- end }}
{{- if $ss.tls.caSecretName }}
{{- $_ := set $out "tls_ca_file" (printf "%s/%s" $ss.tls.mountPath $ss.tls.caKey) }}
{{- end }}
{{- toYaml $out }}
{{- end }}
{{- end }}

{{/*
One probe handler: native gRPC on the gRPC port without TLS; with TLS on the
plaintext health-only port (the kubelet's gRPC probe speaks plaintext only).
*/}}
{{- define "introspectd.probeHandler" -}}
{{- if .root.Values.tls.enabled }}
grpc:
  port: {{ .root.Values.containerPorts.health }}
  service: {{ .service | quote }}
{{- else }}
grpc:
  port: {{ .root.Values.containerPorts.grpc }}
  service: {{ .service | quote }}
{{- end }}
{{- end }}

{{/*
Names of the environment variables the pod gets from secretEnv and extraEnv.
*/}}
{{- define "introspectd.definedEnvNames" -}}
{{- $names := list }}
{{- range .Values.secretEnv }}{{ $names = append $names .name }}{{ end }}
{{- range .Values.extraEnv }}{{ $names = append $names .name }}{{ end }}
{{- if and .Values.sharedState.enabled .Values.sharedState.password.secretName }}{{ $names = append $names "REDIS_PASSWORD" }}{{ end }}
{{- if and .Values.sharedState.enabled .Values.sharedState.integrityKey.secretName }}{{ $names = append $names "SHARED_STATE_INTEGRITY_KEY" }}{{ end }}
{{- join "," $names }}
{{- end }}

{{/*
Names of environment variables the tenants reference (hmac_secret_env,
introspection.client_secret_env).
*/}}
{{- define "introspectd.referencedEnvNames" -}}
{{- $names := list }}
{{- range (.Values.config.tenants | default list) }}
{{- if kindIs "map" . }}
{{- with .hmac_secret_env }}{{ $names = append $names . }}{{ end }}
{{- if kindIs "map" .introspection }}
{{- with .introspection.client_secret_env }}{{ $names = append $names . }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- join "," $names }}
{{- end }}
