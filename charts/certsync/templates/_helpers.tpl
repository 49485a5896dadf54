{{/* The release's full name, the base of every object's name. */}}
{{- define "certsync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "certsync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "certsync.labels" -}}
{{ include "certsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "certsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "certsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "certsync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces, comma-separated; empty: all of them. */}}
{{- define "certsync.watchedNamespaces" -}}
{{- if eq .Values.namespaces.mode "namespaces" -}}
{{- if not .Values.namespaces.list -}}
{{- fail "namespaces.list must name at least one namespace when namespaces.mode is namespaces" -}}
{{- end -}}
{{- join "," .Values.namespaces.list -}}
{{- end -}}
{{- end -}}

{{/*
What the operator uses, and nothing more: the same rules as deploy/rbac.yaml (a test compares them).
*/}}
{{- define "certsync.rules" -}}
- apiGroups: [certsync.io]
  resources: [deploymenttlses, cdncertificates, letsencryptorders]
  verbs: [list, watch, patch]
- apiGroups: [certsync.io]
  resources: [deploymenttlses/status, cdncertificates/status, letsencryptorders/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/*
The Lease rules, as deploy/base/lease-role.yaml: `create` cannot be limited to a name (the object does not exist
when it is checked); reading and renewing only the operator's own Lease.
*/}}
{{- define "certsync.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ .Values.settings.leaseName | default "certsync-leader" }}]
  verbs: [get, update]
{{- end -}}
