{{/* Names, labels, guards and the tap filter's Envoy configuration. */}}

{{- define "tap-filter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: tap-filter
app.kubernetes.io/part-of: packet-inspector-2
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The EnvoyFilter name for one capture point: f5-tap-<release>-<point>. The prefix is what
`kubectl get envoyfilters --all-namespaces | grep f5-tap-` finds.
*/}}
{{- define "tap-filter.name" -}}
{{- printf "f5-tap-%s-%s" (.root.Release.Name | trunc 40 | trimSuffix "-") .point -}}
{{- end -}}

{{/* Istio's name for the analysis service's cluster, as every sidecar sees it. */}}
{{- define "tap-filter.clusterName" -}}
{{- printf "outbound|%d||%s" (int64 .Values.servicePort) .Values.serviceFqdn -}}
{{- end -}}

{{/* The captures this instance makes: point (in the name), Istio context, direction. */}}
{{- define "tap-filter.points" -}}
{{- $points := list -}}
{{- if .Values.capture.inbound -}}
{{- $points = append $points (dict "point" "inbound" "context" "SIDECAR_INBOUND" "direction" "inbound") -}}
{{- end -}}
{{- if .Values.capture.outbound -}}
{{- $points = append $points (dict "point" "outbound" "context" "SIDECAR_OUTBOUND" "direction" "outbound") -}}
{{- end -}}
{{- if .Values.capture.gateway -}}
{{- /* A gateway receives requests from outside: its traces are named by authority like inbound ones. */ -}}
{{- $points = append $points (dict "point" "gateway" "context" "GATEWAY" "direction" "inbound") -}}
{{- end -}}
{{- toJson $points -}}
{{- end -}}

{{/* Refuses values that would capture the wrong traffic or nothing at all. */}}
{{- define "tap-filter.guards" -}}
{{- $labels := .Values.workloadSelector.labels | default dict -}}
{{- if and (eq .Release.Namespace .Values.istioRootNamespace) (empty $labels) -}}
{{- fail (printf "tap-filter: refusing to install in the %s namespace without workloadSelector.labels. An EnvoyFilter in Istio's root namespace applies to every sidecar and gateway in the mesh, so this instance would capture traffic from all pods in the service mesh, including the analysis service (%s), which would then capture its own incoming traffic. Label the pods you want to capture and add that key/value pair under workloadSelector.labels in your override values file, or install the instance in the namespace of the pods instead." .Values.istioRootNamespace .Values.serviceFqdn) -}}
{{- end -}}
{{- $fqdnParts := splitList "." .Values.serviceFqdn -}}
{{- if and (gt (len $fqdnParts) 1) (eq .Release.Namespace (index $fqdnParts 1)) (empty $labels) -}}
{{- fail (printf "tap-filter: refusing to capture every pod in namespace %s: the analysis service (%s) runs there, and it would capture its own incoming traffic. Install the instance in another namespace, or select pods with workloadSelector.labels." .Release.Namespace .Values.serviceFqdn) -}}
{{- end -}}
{{- if not .Values.serviceFqdn -}}
{{- fail "tap-filter: serviceFqdn is empty: set it to the analysis service, for example tap-emulator.analysis-emulator.svc.cluster.local" -}}
{{- end -}}
{{- $port := int64 .Values.servicePort -}}
{{- if or (lt $port 1) (gt $port 65535) -}}
{{- fail (printf "tap-filter: servicePort %v is not a TCP port (1-65535)" .Values.servicePort) -}}
{{- end -}}
{{- if not (has .Values.sink (list "grpc" "admin")) -}}
{{- fail (printf "tap-filter: sink must be grpc or admin, not %q" (toString .Values.sink)) -}}
{{- end -}}
{{- $points := include "tap-filter.points" . | fromJsonArray -}}
{{- if empty $points -}}
{{- fail "tap-filter: nothing to capture: enable at least one of capture.inbound, capture.outbound and capture.gateway" -}}
{{- end -}}
{{- if and (eq .Values.sink "admin") (gt (len $points) 1) -}}
{{- fail "tap-filter: with sink admin, enable exactly one of capture.inbound, capture.outbound and capture.gateway: a proxy serves one admin /tap stream at a time, and the relay tags everything it forwards with one direction. Capture the other direction in a separate run." -}}
{{- end -}}
{{- end -}}

{{/* Which requests are captured: all, or those carrying match.requestHeader. */}}
{{- define "tap-filter.match" -}}
{{- $header := .Values.match.requestHeader -}}
{{- if $header.name -}}
http_request_headers_match:
  headers:
    - name: {{ $header.name | quote }}
      {{- if $header.value }}
      string_match:
        exact: {{ $header.value | quote }}
      {{- else }}
      present_match: true
      {{- end }}
{{- else -}}
any_match: true
{{- end -}}
{{- end -}}

{{/*
The sink's tap_id: <release>-<point>, ending in the direction the analysis emulator reads from
its last token (split on - . _ ~). A gateway's ends in -gateway-inbound.
*/}}
{{- define "tap-filter.tapId" -}}
{{- if eq .point.point .point.direction -}}
{{- printf "%s-%s" .root.Release.Name .point.direction -}}
{{- else -}}
{{- printf "%s-%s-%s" .root.Release.Name .point.point .point.direction -}}
{{- end -}}
{{- end -}}

{{/*
typed_config of envoy.filters.http.tap for one capture point. Call with (dict "root" $ "point" <point dict>).
*/}}
{{- define "tap-filter.tapConfig" -}}
{{- $values := .root.Values -}}
"@type": type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap
common_config:
{{- if eq $values.sink "admin" }}
  admin_config:
    config_id: {{ $values.admin.configId | quote }}
{{- else }}
  static_config:
    match:
      {{- include "tap-filter.match" .root | nindent 6 }}
    output_config:
      streaming: {{ $values.trace.streaming }}
      max_buffered_rx_bytes: {{ int64 $values.trace.maxBufferedRxBytes }}
      max_buffered_tx_bytes: {{ int64 $values.trace.maxBufferedTxBytes }}
      sinks:
        - format: PROTO_BINARY
          streaming_grpc:
            tap_id: {{ include "tap-filter.tapId" . | quote }}
            grpc_service:
              envoy_grpc:
                cluster_name: {{ include "tap-filter.clusterName" .root | quote }}
{{- end }}
{{- if $values.trace.recordHeadersReceivedTime }}
record_headers_received_time: true
{{- end }}
{{- if $values.trace.recordDownstreamConnection }}
record_downstream_connection: true
{{- end }}
{{- end -}}
