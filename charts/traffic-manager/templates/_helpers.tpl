{{/* Labels every object of the chart carries. */}}
{{- define "tm.labels" -}}
app.kubernetes.io/name: traffic-manager
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
telepresence.io/managed-by: telepresence
{{- end }}

{{/* The pod selector of the manager. */}}
{{- define "tm.selector" -}}
app: traffic-manager
telepresence.io/managed-by: telepresence
{{- end }}

{{/* The image reference: [registry/]name:tag. */}}
{{- define "tm.image" -}}
{{- $tag := required "image.tag is required (telepresence helm install sets it to the tag of its own build)" .Values.image.tag -}}
{{- if .Values.image.registry -}}
{{ trimSuffix "/" .Values.image.registry }}/{{ .Values.image.name }}:{{ $tag }}
{{- else -}}
{{ .Values.image.name }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/* The agent image: agent.image as a whole reference when a string (earlier charts), else
     [image.registry/](agent.image.name or image.name):(agent.image.tag or image.tag). */}}
{{- define "tm.agentImage" -}}
{{- $a := .Values.agent.image -}}
{{- if kindIs "string" $a -}}
{{ $a | default (include "tm.image" .) }}
{{- else -}}
{{- $name := $a.name | default .Values.image.name -}}
{{- $tag := $a.tag | default (required "image.tag is required (telepresence helm install sets it to the tag of its own build)" .Values.image.tag) -}}
{{- if .Values.image.registry -}}
{{ trimSuffix "/" .Values.image.registry }}/{{ $name }}:{{ $tag }}
{{- else -}}
{{ $name }}:{{ $tag }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The agent's pull secrets, comma separated (none when agent.image is a string). */}}
{{- define "tm.agentPullSecrets" -}}
{{- if not (kindIs "string" .Values.agent.image) -}}
{{ join "," .Values.agent.image.pullSecrets }}
{{- end -}}
{{- end }}

{{/* The rules the manager needs in a namespace it serves (manager/src/kubernetes/contract.rs,
     Scope::Served; tests/tests/helm_chart.rs checks them against that table). */}}
{{- define "tm.namespacedRules" -}}
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, list, watch, patch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
{{- end }}
