{{/* Names: the release name, or <release>-podguard when it does not contain "podguard". */}}
{{- define "podguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object: Kustomize's plus Helm's standard ones. */}}
{{- define "podguard.commonLabels" -}}
app.kubernetes.io/part-of: podguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Helm's own labels only (for objects copied from Kustomize as they are). */}}
{{- define "podguard.helmLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "podguard.labels" -}}
app.kubernetes.io/name: podguard
{{ include "podguard.commonLabels" . }}
{{- end -}}

{{- define "podguard.selectorLabels" -}}
app.kubernetes.io/name: podguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "podguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "podguard.trainingImage" -}}
{{- printf "%s:%s" .Values.trainingImage.repository (.Values.trainingImage.tag | default (printf "%s-cuda" .Chart.AppVersion)) -}}
{{- end -}}

{{- define "podguard.modelsClaim" -}}
{{- .Values.models.persistence.existingClaim | default (printf "%s-models" (include "podguard.fullname" .)) -}}
{{- end -}}

{{- define "podguard.validate" -}}
{{- if not (has .Values.mode (list "alert-only" "remediate")) -}}
{{- fail (printf "mode must be alert-only or remediate, not %q" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.models.persistence.accessMode (list "ReadWriteOnce" "ReadWriteMany" "ReadWriteOncePod")) -}}
{{- fail (printf "models.persistence.accessMode must be ReadWriteOnce, ReadWriteMany or ReadWriteOncePod, not %q" .Values.models.persistence.accessMode) -}}
{{- end -}}
{{- if not .Values.prometheus.url -}}
{{- fail "prometheus.url is required (the Prometheus podguard reads pod metrics from)" -}}
{{- end -}}
{{- $a := .Values.prometheus.auth -}}
{{- if and (or $a.bearerTokenKey $a.passwordKey $a.caKey) (not $a.existingSecret) -}}
{{- fail "prometheus.auth: bearerTokenKey, passwordKey and caKey name keys of prometheus.auth.existingSecret, which is empty" -}}
{{- end -}}
{{- if and $a.username (not $a.passwordKey) -}}
{{- fail "prometheus.auth.username needs prometheus.auth.passwordKey" -}}
{{- end -}}
{{- end -}}

{{/* The daemon's settings file (detector/settings.py), as deploy/kustomize/base/config.yaml. */}}
{{- define "podguard.config" -}}
{{- $prom := dict "url" .Values.prometheus.url "node_name" "" "node_matcher" "node=\"{node}\"" -}}
{{- $a := .Values.prometheus.auth -}}
{{- $http := dict -}}
{{- if $a.bearerTokenKey }}{{ $_ := set $http "bearer_token_file" (printf "/var/run/secrets/podguard/prometheus/%s" $a.bearerTokenKey) }}{{ end -}}
{{- if $a.username }}{{ $_ := set $http "username" $a.username }}{{ end -}}
{{- if $a.passwordKey }}{{ $_ := set $http "password_file" (printf "/var/run/secrets/podguard/prometheus/%s" $a.passwordKey) }}{{ end -}}
{{- if $a.caKey }}{{ $_ := set $http "ca_file" (printf "/var/run/secrets/podguard/prometheus/%s" $a.caKey) }}{{ end -}}
{{- if $a.headers }}{{ $_ := set $http "headers" $a.headers }}{{ end -}}
{{- if $http }}{{ $_ := set $prom "http" $http }}{{ end -}}
{{- $remediation := dict "enabled" (eq .Values.mode "remediate") "dry_run" .Values.dryRun -}}
{{- if eq .Values.mode "remediate" }}{{ $_ := set $remediation "opt_in_label" "podguard.io/remediate" }}{{ end -}}
{{- $cfg := dict
    "sources" (dict "kind" "prometheus" "prometheus" $prom)
    "server" (dict "host" "0.0.0.0" "port" 9731)
    "runtime" (dict "log_format" "json" "console" false "verdicts_path" "" "remediation_dry_run" false "grace_period_s" 20)
    "model" (dict "root" (ternary "/models" "" .Values.models.persistence.enabled) "watch_s" 30)
    "alerting" (dict "alertmanager_urls" .Values.alertmanager.urls "kubernetes_events" .Values.kubernetesEvents)
    "remediation" $remediation -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy .Values.config)) -}}
{{- end -}}
