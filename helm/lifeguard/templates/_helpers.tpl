{{/* Chart name, overridable. */}}
{{- define "lifeguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name (release `lifeguard` -> `lifeguard`). */}}
{{- define "lifeguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lifeguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lifeguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifeguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lifeguard.labels" -}}
helm.sh/chart: {{ include "lifeguard.chart" . }}
{{ include "lifeguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lifeguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lifeguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the bundle: the user's, or the chart's own. */}}
{{- define "lifeguard.bundleConfigMap" -}}
{{- default (printf "%s-bundle" (include "lifeguard.fullname" .)) .Values.bundle.existingConfigMap }}
{{- end }}

{{/* Istio's outbound cluster for the Lifeguard Service, as Envoy names it in every proxy. */}}
{{- define "lifeguard.istioCluster" -}}
{{- printf "outbound|%d||%s.%s.svc.%s" (int .Values.ports.grpc) (include "lifeguard.fullname" .) .Release.Namespace .Values.istio.clusterDomain }}
{{- end }}

{{- define "lifeguard.istioNamespace" -}}
{{- default .Release.Namespace .Values.istio.targetNamespace }}
{{- end }}
