{{/* Names, labels, guards and the Envoy configuration of each sink. */}}

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
The EnvoyFilter name for one capture point (or the cluster patch): f5-tap-<release>-<point>.
The prefix is what `kubectl get envoyfilters --all-namespaces | grep f5-tap-` finds.
*/}}
{{- define "tap-filter.name" -}}
{{- printf "f5-tap-%s-%s" (.root.Release.Name | trunc 40 | trimSuffix "-") .point -}}
{{- end -}}

{{/* Istio's name for the analysis service's cluster, as every sidecar sees it. */}}
{{- define "tap-filter.clusterName" -}}
{{- printf "outbound|%d||%s" (int64 .Values.servicePort) .Values.serviceFqdn -}}
{{- end -}}

{{/*
The :authority of the gRPC streams to the analysis service. Without it Envoy sends the cluster
name, whose "|" an HTTP/2 peer must refuse: the analysis service's own sidecar resets the whole
connection (http2.invalid.header.field), and every capture is lost behind failure_mode_allow.
*/}}
{{- define "tap-filter.authority" -}}
{{- printf "%s:%d" .Values.serviceFqdn (int64 .Values.servicePort) -}}
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

{{/* Seconds in a duration written as protobuf JSON does ("5s", "0.5s"); fails on anything else. */}}
{{- define "tap-filter.durationSeconds" -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]{1,9})?s$" (toString .value)) -}}
{{- fail (printf "tap-filter: %s must be a duration in seconds such as 5s or 0.5s, not %q" .key (toString .value)) -}}
{{- end -}}
{{- trimSuffix "s" (toString .value) | float64 -}}
{{- end -}}

{{/* Refuses values that would capture the wrong traffic, nothing at all, or crash proxies. */}}
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
{{- if not (has .Values.sink (list "extProc" "grpc" "admin")) -}}
{{- fail (printf "tap-filter: sink must be extProc, grpc or admin, not %q" (toString .Values.sink)) -}}
{{- end -}}
{{- $points := include "tap-filter.points" . | fromJsonArray -}}
{{- if empty $points -}}
{{- fail "tap-filter: nothing to capture: enable at least one of capture.inbound, capture.outbound and capture.gateway" -}}
{{- end -}}
{{- if and (eq .Values.sink "admin") (gt (len $points) 1) -}}
{{- fail "tap-filter: with sink admin, enable exactly one of capture.inbound, capture.outbound and capture.gateway: a proxy serves one admin /tap stream at a time, and the relay tags everything it forwards with one direction. Capture the other direction in a separate run." -}}
{{- end -}}
{{- $percent := float64 .Values.sampling.percent -}}
{{- if or (lt $percent 0.0) (gt $percent 100.0) -}}
{{- fail (printf "tap-filter: sampling.percent must be between 0 and 100, not %v" .Values.sampling.percent) -}}
{{- end -}}
{{- if and (lt $percent 100.0) (ne .Values.sink "extProc") -}}
{{- fail (printf "tap-filter: sampling.percent %v needs sink extProc; the %s sink captures every request its match selects" .Values.sampling.percent .Values.sink) -}}
{{- end -}}
{{- range $key := list "maxBufferedRxBytes" "maxBufferedTxBytes" -}}
{{- if lt (int64 (get $.Values.trace $key)) 0 -}}
{{- fail (printf "tap-filter: trace.%s must be 0 or more bytes, not %v" $key (get $.Values.trace $key)) -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.sink "extProc" -}}
{{- if le (float64 (include "tap-filter.durationSeconds" (dict "key" "extProc.deferredCloseTimeout" "value" .Values.extProc.deferredCloseTimeout))) 0.0 -}}
{{- fail "tap-filter: extProc.deferredCloseTimeout must be above 0s: the proxy would close each stream before the analysis service has read it" -}}
{{- end -}}
{{- range $key := list "interval" "timeout" -}}
{{- $seconds := include "tap-filter.durationSeconds" (dict "key" (printf "extProc.keepalive.%s" $key) "value" (get $.Values.extProc.keepalive $key)) | float64 -}}
{{- if lt $seconds 0.001 -}}
{{- fail (printf "tap-filter: extProc.keepalive.%s must be at least 0.001s (Envoy's lower bound)" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The tap_id of a capture point: <release>-<point>, ending in the direction the analysis emulator
reads from its last token (split on - . _ ~). A gateway's ends in -gateway-inbound. The tap
sinks send it as tap_id, the ext_proc filter as the x-tap-id metadata of every stream.
*/}}
{{- define "tap-filter.tapId" -}}
{{- if eq .point.point .point.direction -}}
{{- printf "%s-%s" .root.Release.Name .point.direction -}}
{{- else -}}
{{- printf "%s-%s-%s" .root.Release.Name .point.point .point.direction -}}
{{- end -}}
{{- end -}}

{{/* match.proxy of every patch of the extProc sink: only proxies whose Envoy has observability mode. */}}
{{- define "tap-filter.proxyMatch" -}}
{{- if and (eq .Values.sink "extProc") .Values.extProc.proxyVersion -}}
proxy:
  proxyVersion: {{ .Values.extProc.proxyVersion | quote }}
{{- end -}}
{{- end -}}

{{/* --- tap filter (sinks grpc and admin) --------------------------------------------- */}}

{{/* Which requests the tap filter captures: all, or those carrying match.requestHeader. */}}
{{- define "tap-filter.tapMatch" -}}
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
      {{- include "tap-filter.tapMatch" .root | nindent 6 }}
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
                authority: {{ include "tap-filter.authority" .root | quote }}
{{- end }}
{{- if $values.trace.recordHeadersReceivedTime }}
record_headers_received_time: true
{{- end }}
{{- if $values.trace.recordDownstreamConnection }}
record_downstream_connection: true
{{- end }}
{{- end -}}

{{/* --- ext_proc filter (sink extProc) -------------------------------------------------- */}}

{{/*
typed_config of envoy.filters.http.ext_proc for one capture point, as the emulator's ext_proc
contract asks. Call with (dict "root" $ "point" <point dict>).
- observability_mode: Envoy sends each part of the transaction and never waits for an answer.
- failure_mode_allow: without it a missing or failing analysis service turns every request
  into an error, even in observability mode.
- initial_metadata: static gRPC metadata on every stream, telling the emulator which capture
  point this is (x-tap-id) and what trace.* asked for.
- request_attributes: only what the emulator names files by; every attribute costs the proxy
  CPU on every request, and xds.node whole would add about 80 KB per request.
- no grpc_service timeout: the stream lives as long as its transaction plus the deferred close.
*/}}
{{- define "tap-filter.extProcConfig" -}}
{{- $trace := .root.Values.trace -}}
"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
grpc_service:
  envoy_grpc:
    cluster_name: {{ include "tap-filter.clusterName" .root | quote }}
    authority: {{ include "tap-filter.authority" .root | quote }}
  initial_metadata:
    - key: x-tap-id
      value: {{ include "tap-filter.tapId" . | quote }}
    - key: x-tap-streaming
      value: {{ ternary "true" "false" $trace.streaming | quote }}
    - key: x-tap-max-buffered-rx-bytes
      value: {{ int64 $trace.maxBufferedRxBytes | toString | quote }}
    - key: x-tap-max-buffered-tx-bytes
      value: {{ int64 $trace.maxBufferedTxBytes | toString | quote }}
    - key: x-tap-record-headers-received-time
      value: {{ ternary "true" "false" $trace.recordHeadersReceivedTime | quote }}
    - key: x-tap-record-downstream-connection
      value: {{ ternary "true" "false" $trace.recordDownstreamConnection | quote }}
observability_mode: true
failure_mode_allow: true
deferred_close_timeout: {{ .root.Values.extProc.deferredCloseTimeout | quote }}
processing_mode:
  request_header_mode: SEND
  response_header_mode: SEND
  {{- /* A body the emulator keeps none of is not worth sending. */}}
  request_body_mode: {{ ternary "NONE" "STREAMED" (eq (int64 $trace.maxBufferedRxBytes) 0) }}
  response_body_mode: {{ ternary "NONE" "STREAMED" (eq (int64 $trace.maxBufferedTxBytes) 0) }}
  request_trailer_mode: SEND
  response_trailer_mode: SEND
request_attributes:
  - xds.node.id
  - xds.node.cluster
  - xds.node.metadata.NAMESPACE
  {{- if $trace.recordDownstreamConnection }}
  - source.address
  - source.port
  - destination.address
  - destination.port
  {{- end }}
  {{- if $trace.recordHeadersReceivedTime }}
  - request.time
  {{- end }}
{{- end -}}

{{/* The SkipFilter action of the matcher below. */}}
{{- define "tap-filter.skipAction" -}}
action:
  name: skip
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter
{{- end -}}

{{/* An input that reads one request header. Call with the header name. */}}
{{- define "tap-filter.headerInput" -}}
input:
  name: request-header
  typed_config:
    "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
    header_name: {{ . | quote }}
{{- end -}}

{{/*
The match tree that skips the ext_proc filter for requests this instance does not capture;
empty when every request is captured. Each matcher that matches skips the filter:
- match.requestHeader: skip when the header is missing or has another value;
- sampling.percent: skip when a hash of x-request-id, modulo 10000, is at or above percent
  x 100. ConsistentHashing is compiled into Istio's proxies (the runtime_fraction matcher is
  not), and x-request-id is set by the proxy before any filter runs.
*/}}
{{- define "tap-filter.skipMatcher" -}}
{{- $header := .Values.match.requestHeader -}}
{{- $percent := float64 .Values.sampling.percent -}}
{{- if or $header.name (lt $percent 100.0) -}}
matcher_list:
  matchers:
    {{- if $header.name }}
    - predicate:
        not_matcher:
          single_predicate:
            {{- include "tap-filter.headerInput" $header.name | nindent 12 }}
            value_match:
              {{- if $header.value }}
              exact: {{ $header.value | quote }}
              {{- else }}
              safe_regex:
                google_re2: {}
                regex: ".*"
              {{- end }}
      on_match:
        {{- include "tap-filter.skipAction" . | nindent 8 }}
    {{- end }}
    {{- if lt $percent 100.0 }}
    - predicate:
        single_predicate:
          {{- include "tap-filter.headerInput" "x-request-id" | nindent 10 }}
          custom_match:
            name: sampling
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.matching.input_matchers.consistent_hashing.v3.ConsistentHashing
              threshold: {{ int64 (round (mulf $percent 100.0) 0) }}
              modulo: 10000
      on_match:
        {{- include "tap-filter.skipAction" . | nindent 8 }}
    {{- end }}
{{- end -}}
{{- end -}}

{{/*
The HTTP filter one capture point inserts before the router: name and typed_config. With sink
extProc and a match tree, the ext_proc filter is wrapped in Envoy's ExtensionWithMatcher
(the match_delegate filter), which runs it only for the requests the tree does not skip.
*/}}
{{- define "tap-filter.httpFilter" -}}
{{- if eq .root.Values.sink "extProc" -}}
{{- $skip := include "tap-filter.skipMatcher" .root -}}
name: envoy.filters.http.ext_proc
typed_config:
{{- if $skip }}
  "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
  extension_config:
    name: envoy.filters.http.ext_proc
    typed_config:
      {{- include "tap-filter.extProcConfig" . | nindent 6 }}
  xds_matcher:
    {{- $skip | nindent 4 }}
{{- else }}
  {{- include "tap-filter.extProcConfig" . | nindent 2 }}
{{- end }}
{{- else -}}
name: envoy.filters.http.tap
typed_config:
  {{- include "tap-filter.tapConfig" . | nindent 2 }}
{{- end -}}
{{- end -}}
