{{/*
One scrape endpoint of a ServiceMonitor or PodMonitor, from metrics.serviceMonitor or metrics.podMonitor (passed
as .monitor). Keys added after the first chart version are optional (`helm upgrade --reuse-values`).
*/}}
{{- define "certsync.scrapeEndpoint" -}}
port: metrics
path: /metrics
# Keep the resources' own namespace label (the operator's pod namespace would replace it).
honorLabels: true
interval: {{ .monitor.interval | default "30s" }}
{{- with .monitor.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .monitor.relabelings }}
relabelings: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.metricRelabelings }}
metricRelabelings: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
