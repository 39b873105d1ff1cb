{{/*
Names, labels and the values several templates must agree on. Ports are part
of the programs' contract (see DESIGN.md) and are fixed here, once.
*/}}

{{- define "teresa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "teresa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "teresa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Ports fixed by the programs' contract. */}}
{{- define "teresa.port.grpc" -}}50052{{- end -}}
{{- define "teresa.port.poolerMetrics" -}}8082{{- end -}}
{{- define "teresa.port.admin" -}}50053{{- end -}}
{{- define "teresa.port.operatorMetrics" -}}8080{{- end -}}

{{- define "teresa.labels" -}}
helm.sh/chart: {{ include "teresa.chart" . }}
app.kubernetes.io/name: {{ include "teresa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: teresa
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "teresa.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "teresa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "teresa.pooler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "teresa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: pooler
{{- end -}}

{{/* The fleet label selector, in the flag syntax of --pooler-selector. */}}
{{- define "teresa.fleet.selector" -}}
{{- $parts := list -}}
{{- range $k, $v := .Values.fleet.labels -}}
{{- $parts = append $parts (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{- define "teresa.operator.fullname" -}}{{ include "teresa.fullname" . }}-operator{{- end -}}
{{- define "teresa.pooler.fullname" -}}{{ include "teresa.fullname" . }}-pooler{{- end -}}

{{- define "teresa.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "teresa.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret the operator writes the fleet snapshot to and every pooler mounts. */}}
{{- define "teresa.snapshotSecret" -}}{{ include "teresa.fullname" . }}-pooler-config{{- end -}}

{{- define "teresa.leaseName" -}}{{ include "teresa.operator.fullname" . }}{{- end -}}

{{- define "teresa.operator.tlsSecret" -}}
{{- default (printf "%s-tls" (include "teresa.operator.fullname" .)) .Values.operator.tls.existingSecret -}}
{{- end -}}

{{- define "teresa.pooler.tlsSecret" -}}
{{- default (printf "%s-tls" (include "teresa.pooler.fullname" .)) .Values.pooler.tls.existingSecret -}}
{{- end -}}

{{- define "teresa.pooler.clientCaSecret" -}}
{{- default (include "teresa.pooler.tlsSecret" .) .Values.pooler.leaseApi.clientCaSecret -}}
{{- end -}}

{{- define "teresa.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secure defaults shared by every pod and container of the chart. */}}
{{- define "teresa.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "teresa.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "teresa.metricsScheme" -}}
{{- if .Values.pooler.metrics.plaintext -}}HTTP{{- else -}}HTTPS{{- end -}}
{{- end -}}

{{/* Issuer of the leaf certificates under cert-manager. */}}
{{- define "teresa.certManager.issuerRef" -}}
{{- if .Values.certManager.issuerRef.name -}}
name: {{ .Values.certManager.issuerRef.name }}
kind: {{ .Values.certManager.issuerRef.kind }}
group: {{ .Values.certManager.issuerRef.group }}
{{- else -}}
name: {{ include "teresa.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end -}}
{{- end -}}

{{/*
The teresa-pooler arguments, shared by the chart's Deployment and documented
for sidecars (examples/sidecar.yaml repeats them; the chart checks keep the two
equal). Paths: /etc/teresa/tls (server certificate and admin CA),
/etc/teresa/client-ca (lease API client CA), /etc/teresa/config (snapshot).
*/}}
{{- define "teresa.pooler.args" -}}
- --config=/etc/teresa/config/pooler.yaml
- --host=0.0.0.0
- --port={{ include "teresa.port.grpc" . }}
- --metrics-port={{ include "teresa.port.poolerMetrics" . }}
- --admin-port={{ include "teresa.port.admin" . }}
- --tls-cert=/etc/teresa/tls/tls.crt
- --tls-key=/etc/teresa/tls/tls.key
- --admin-ca=/etc/teresa/tls/ca.crt
- --admin-identities={{ .Values.operatorIdentity }}
{{- if .Values.pooler.leaseApi.requireClientCert }}
- --client-ca=/etc/teresa/client-ca/ca.crt
{{- end }}
{{- if .Values.pooler.metrics.plaintext }}
- --metrics-plaintext
{{- end }}
- --drain-timeout={{ .Values.pooler.drainTimeout }}
- --log-format={{ .Values.logging.format }}
- --log-level={{ .Values.logging.level }}
{{- with .Values.pooler.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}
