{{/* calico-crd-hook chart patch: shared helpers. */}}


{{/* The tigera-operator values: the subchart's in an umbrella chart, else this chart's own. */}}
{{- define "calicoCrdHook.operatorValues" -}}
{{- $name := .Values.calicoCrdHook.operatorChart | default "tigera-operator" -}}
{{- if hasKey .Values $name -}}
{{- toYaml (index .Values $name) -}}
{{- else -}}
{{- toYaml .Values -}}
{{- end -}}
{{- end -}}

{{/* Target version: explicit value, else the resolved subchart version, else AppVersion (the patch
inside the tigera-operator chart itself). In an umbrella chart without a dependency of the
configured name (aliased, or misspelt), fail rather than guess from the umbrella's AppVersion. */}}
{{- define "calicoCrdHook.version" -}}
{{- $hook := .Values.calicoCrdHook -}}
{{- $name := $hook.operatorChart | default "tigera-operator" -}}
{{- $version := $hook.calicoVersion | default "" -}}
{{- if and (not $version) .Subcharts -}}
{{- if not (hasKey .Subcharts $name) -}}
{{- fail (printf "calico-crd-hook: this chart has no dependency named %q (it has: %s): set calicoCrdHook.operatorChart to the tigera-operator dependency's name or alias, or set calicoCrdHook.calicoVersion" $name (keys .Subcharts | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $version = (index .Subcharts $name).Chart.Version -}}
{{- end -}}
{{- if not $version -}}
{{- $version = .Chart.AppVersion | default "" -}}
{{- end -}}
{{- if not $version -}}
{{- fail (printf "calico-crd-hook: cannot tell the target Calico version: set calicoCrdHook.calicoVersion (e.g. v3.29.1), or add the %s dependency" $name) -}}
{{- end -}}
{{- $version -}}
{{- end -}}

{{- define "calicoCrdHook.name" -}}
{{- printf "%s-calico-crd-hook" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A Job's name becomes its Pods' job-name label value (at most 63 characters): the base name is
cut before the suffix is appended, for every release name Helm allows (53 characters). */}}
{{- define "calicoCrdHook.jobName" -}}
{{- $base := include "calicoCrdHook.name" .root -}}
{{- printf "%s%s" ($base | trunc (int (sub 63 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{/* Cluster-scoped objects: two releases of one name in two namespaces must not share them. */}}
{{- define "calicoCrdHook.clusterName" -}}
{{- printf "%s-%s-calico-crd-hook" .Release.Namespace .Release.Name | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "calicoCrdHook.labels" -}}
app.kubernetes.io/name: calico-crd-hook
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: crd-upgrade-hook
app.kubernetes.io/version: {{ .Values.calicoCrdHook.image.tag | default "" | toString | trunc 63 | trimSuffix "-" | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name (.Chart.Version | replace "+" "_") | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Hook annotations; the ServiceAccount and RBAC get lower weights than the Job. */}}
{{- define "calicoCrdHook.hookAnnotations" -}}
helm.sh/hook: {{ join "," (.events | default .hook.hookEvents) | quote }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ .deletePolicy | default "before-hook-creation,hook-succeeded" }}
{{- end -}}

{{- define "calicoCrdHook.image" -}}
{{- $image := .Values.calicoCrdHook.image -}}
{{- $repository := $image.repository -}}
{{- if $image.registry }}{{ $repository = printf "%s/%s" $image.registry $image.repository }}{{ end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $image.tag -}}
{{- end -}}
{{- end -}}
