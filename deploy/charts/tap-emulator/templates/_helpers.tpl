{{/* Names, labels and the derived settings shared by the templates. */}}

{{- define "tap-emulator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-prefixed name for everything but the Service (whose name is fixed by serviceFqdn). */}}
{{- define "tap-emulator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tap-emulator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tap-emulator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tap-emulator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tap-emulator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tap-emulator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tap-emulator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: analysis-emulator
app.kubernetes.io/part-of: packet-inspector-2
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tap-emulator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The port of a "host:port" listen address, as an integer. */}}
{{- define "tap-emulator.portOf" -}}
{{- $port := regexFind "[0-9]+$" (toString .) -}}
{{- if not $port -}}
{{- fail (printf "tap-emulator: listen address %q has no port" (toString .)) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "tap-emulator.grpcContainerPort" -}}
{{- include "tap-emulator.portOf" .Values.config.listen -}}
{{- end -}}

{{- define "tap-emulator.metricsContainerPort" -}}
{{- include "tap-emulator.portOf" .Values.config.metrics_listen -}}
{{- end -}}

{{- define "tap-emulator.sizeLimitBytes" -}}
{{- mul (int64 .Values.output.sizeLimitMiB) 1048576 -}}
{{- end -}}

{{- define "tap-emulator.tlsDir" -}}/etc/tap-emulator/tls{{- end -}}

{{- define "tap-emulator.forwardTlsDir" -}}/etc/tap-emulator/forward-tls{{- end -}}

{{/*
The settings file: config as given, plus what the chart derives. retention_max_bytes defaults
to output.retentionPercent of the volume and must stay below the volume's size limit (an
emptyDir over its sizeLimit gets the pod evicted: the emulator would never see "disk full").
*/}}
{{- define "tap-emulator.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $limit := int64 (include "tap-emulator.sizeLimitBytes" .) -}}
{{- if not (hasKey $config "retention_max_bytes") -}}
{{- $percent := int64 .Values.output.retentionPercent -}}
{{- if or (lt $percent 1) (gt $percent 99) -}}
{{- fail (printf "tap-emulator: output.retentionPercent must be between 1 and 99, not %d" $percent) -}}
{{- end -}}
{{- $_ := set $config "retention_max_bytes" (div (mul $limit $percent) 100) -}}
{{- end -}}
{{- $retention := int64 (get $config "retention_max_bytes") -}}
{{- if or (le $retention 0) (ge $retention $limit) -}}
{{- fail (printf "tap-emulator: config.retention_max_bytes (%d) must be above 0 and below the output volume's size limit (output.sizeLimitMiB = %d bytes): Kubernetes evicts a pod whose emptyDir outgrows its sizeLimit, so the emulator must delete old files before that happens" $retention $limit) -}}
{{- end -}}
{{- if .Values.tls.secretName -}}
{{- $_ := set $config "tls_cert_file" (printf "%s/tls.crt" (include "tap-emulator.tlsDir" .)) -}}
{{- $_ := set $config "tls_key_file" (printf "%s/tls.key" (include "tap-emulator.tlsDir" .)) -}}
{{- if .Values.tls.clientCA -}}
{{- $_ := set $config "tls_client_ca_file" (printf "%s/ca.crt" (include "tap-emulator.tlsDir" .)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.forwardTo -}}
{{- if and (get $config "forward_to") (ne (get $config "forward_to") .Values.forwardTo) -}}
{{- fail (printf "tap-emulator: forwardTo (%s) and config.forward_to (%s) differ: set forwardTo only" .Values.forwardTo (get $config "forward_to")) -}}
{{- end -}}
{{- $_ := set $config "forward_to" .Values.forwardTo -}}
{{- else if not (hasKey $config "forward_to") -}}
{{- $_ := set $config "forward_to" "" -}}
{{- end -}}
{{- if .Values.forwardTLS.secretName -}}
{{- if not (get $config "forward_to") -}}
{{- fail "tap-emulator: forwardTLS.secretName is set but forwardTo is empty: TLS to which tool?" -}}
{{- end -}}
{{- $_ := set $config "forward_tls_ca_file" (printf "%s/ca.crt" (include "tap-emulator.forwardTlsDir" .)) -}}
{{- if .Values.forwardTLS.clientCertificate -}}
{{- $_ := set $config "forward_tls_cert_file" (printf "%s/tls.crt" (include "tap-emulator.forwardTlsDir" .)) -}}
{{- $_ := set $config "forward_tls_key_file" (printf "%s/tls.key" (include "tap-emulator.forwardTlsDir" .)) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.config.output_dir) (not (get $config "forward_to")) -}}
{{- fail "tap-emulator: config.output_dir is empty (no files) and forwardTo is not set: the emulator would do nothing; set forwardTo (a pure bridge) or an output directory" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* SIGTERM grace: the emulator's drain plus a margin, so the drain is never cut short. */}}
{{- define "tap-emulator.terminationGracePeriodSeconds" -}}
{{- if lt (int64 .Values.terminationGraceExtraSeconds) 1 -}}
{{- fail "tap-emulator: terminationGraceExtraSeconds must be at least 1, or Kubernetes may kill the emulator before its drain ends" -}}
{{- end -}}
{{- add (int64 .Values.config.drain_timeout_seconds) (int64 .Values.terminationGraceExtraSeconds) -}}
{{- end -}}

{{/*
The TLS the proxies use towards a tap port outside the sidecar must match what the emulator
serves there: plaintext unless tls.secretName, and never Istio's mutual TLS (no sidecar
answers it on that port).
*/}}
{{- define "tap-emulator.checkTapPortTls" -}}
{{- $mode := .Values.mesh.tapPortTls.mode | default "" -}}
{{- if eq $mode "ISTIO_MUTUAL" -}}
{{- fail "tap-emulator: mesh.tapPortTls.mode ISTIO_MUTUAL cannot work: with mesh.bypassSidecarOnTapPort the emulator's sidecar no longer serves the tap port; use DISABLE, or SIMPLE/MUTUAL with tls.secretName" -}}
{{- end -}}
{{- if and .Values.tls.secretName (eq $mode "DISABLE") -}}
{{- fail "tap-emulator: tls.secretName makes the emulator serve TLS on its tap port, but mesh.tapPortTls.mode is DISABLE: the proxies would send plaintext and every capture would fail; set mesh.tapPortTls to SIMPLE (MUTUAL with tls.clientCA) with how the proxies verify the certificate" -}}
{{- end -}}
{{- if and (not .Values.tls.secretName) (ne $mode "DISABLE") -}}
{{- fail (printf "tap-emulator: mesh.tapPortTls.mode %s needs the emulator to serve TLS (tls.secretName); without it the tap port is plaintext and the proxies' handshakes would fail" $mode) -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: the user's, plus the tap port left out of the sidecar's interception. */}}
{{- define "tap-emulator.podAnnotations" -}}
{{- $annotations := deepCopy .Values.podAnnotations -}}
{{- if .Values.mesh.bypassSidecarOnTapPort -}}
{{- $key := "traffic.sidecar.istio.io/excludeInboundPorts" -}}
{{- $ports := list (include "tap-emulator.grpcContainerPort" .) -}}
{{- with get $annotations $key -}}
{{- $ports = append $ports (toString .) -}}
{{- end -}}
{{- $_ := set $annotations $key (join "," $ports) -}}
{{- end -}}
{{- if $annotations -}}
{{- toYaml $annotations -}}
{{- end -}}
{{- end -}}
