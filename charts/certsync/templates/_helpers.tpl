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
  verbs: [create, patch]
{{- end -}}

{{/*
ClusterRemoteAccounts and the Namespaces whose labels their selectors match: cluster-scoped, so in a ClusterRole
(the main one in cluster mode, one of their own in namespaces mode), as deploy/rbac.yaml and the overlay.
*/}}
{{- define "certsync.accountRules" -}}
- apiGroups: [certsync.io]
  resources: [clusterremoteaccounts]
  verbs: [get, list, watch]
- apiGroups: [certsync.io]
  resources: [clusterremoteaccounts/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
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

{{/*
The container's environment as a list of EnvVar: the settings, the watched namespaces, leader election, the
remote CA file and the proxy. Values added after the first chart version are read with `dig`, so that a release
upgraded with values that predate them (`helm upgrade --reuse-values` keeps the old chart's defaults) renders.
*/}}
{{- define "certsync.env" -}}
{{- $env := list -}}
{{- range $key, $value := .Values.settings -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $env = append $env (dict "name" (printf "CERTSYNC_%s" (snakecase $key | upper)) "value" (toString $value)) -}}
{{- end -}}
{{- end -}}
{{- $env = append $env (dict "name" "CERTSYNC_NAMESPACES" "value" (include "certsync.watchedNamespaces" .)) -}}
{{- $env = append $env (dict "name" "CERTSYNC_LEADER_ELECTION" "value" (toString .Values.leaderElection.enabled)) -}}
{{- if dig "remoteCA" "name" "" .Values.AsMap -}}
{{- $file := printf "%s/%s" (include "certsync.remoteCADir" .) (dig "remoteCA" "key" "ca.crt" .Values.AsMap) -}}
{{- $env = append $env (dict "name" "CERTSYNC_REMOTE_CA_FILE" "value" $file) -}}
{{- end -}}
{{- $proxy := dig "proxy" "httpsProxy" "" .Values.AsMap -}}
{{- $proxySecret := dig "proxy" "httpsProxySecret" "name" "" .Values.AsMap -}}
{{- $noProxy := dig "proxy" "noProxy" (list) .Values.AsMap -}}
{{- if and $proxy $proxySecret -}}
{{- fail "proxy.httpsProxy and proxy.httpsProxySecret are exclusive: name the proxy in one of them" -}}
{{- end -}}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@" $proxy -}}
{{- fail "proxy.httpsProxy carries credentials, which anyone reading the Deployment would see: put the URL in a Secret and name it in proxy.httpsProxySecret" -}}
{{- end -}}
{{- range list "HTTPS_PROXY" "https_proxy" -}}
{{- if $proxy -}}
{{- $env = append $env (dict "name" . "value" $proxy) -}}
{{- else if $proxySecret -}}
{{- $key := required "proxy.httpsProxySecret.key names the Secret's key that holds the proxy URL" (dig "proxy" "httpsProxySecret" "key" "" $.Values.AsMap) -}}
{{- $env = append $env (dict "name" . "valueFrom" (dict "secretKeyRef" (dict "name" $proxySecret "key" $key))) -}}
{{- end -}}
{{- end -}}
{{- if or $proxy $proxySecret $noProxy -}}
{{- /* The kubelet expands $(KUBERNETES_SERVICE_HOST), a service variable, to the API server's address. */ -}}
{{- $hosts := concat (list "$(KUBERNETES_SERVICE_HOST)" ".svc" ".cluster.local") $noProxy | uniq | join "," -}}
{{- $env = append $env (dict "name" "NO_PROXY" "value" $hosts) -}}
{{- $env = append $env (dict "name" "no_proxy" "value" $hosts) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Where the remote CA bundle is mounted (read-only). */}}
{{- define "certsync.remoteCADir" -}}
/etc/certsync/remote-ca
{{- end -}}
