package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/siem"
	"github.com/posture-project/posture/collector/webhook"
	"github.com/posture-project/posture/internal/cliflag"
)

// eventsFlags are run's flags for what leaves Posture; config turns them
// into collector.EventsConfig, field for field.
type eventsFlags struct {
	webhooks        *[]string
	siems           *[]string
	receiverLease   *time.Duration
	retryMin        *time.Duration
	retryMax        *time.Duration
	downAfter       *time.Duration
	outboxRetention time.Duration
	ssfIssuer       *string
	ssfListen       *string
	ssfPlaintext    *bool
}

// addEventsFlags declares the flags on run's flag set.
func addEventsFlags(fs *pflag.FlagSet) *eventsFlags {
	f := &eventsFlags{outboxRetention: 7 * 24 * time.Hour}
	f.webhooks = cliflag.Repeated(fs, "webhook", "spec", "post signed JSON events to a URL (repeatable; a list in the configuration file): name=NAME,url=URL,secret-file=FILE[,events=TYPE;TYPE…][,timeout=10s]; the file holds the HMAC secret (mode 0600); events default to every device change (device.*;level.*;check.*;grace.*)", func(v string) error {
		_, err := parseWebhook(v)
		return err
	})
	f.siems = cliflag.Repeated(fs, "siem", "spec", "export every device change and access decision as OCSF JSON lines (repeatable; a list in the configuration file): name=NAME,file=PATH[,max-size=100MB][,keep=10], or name=NAME,syslog=tls://HOST:6514[,ca=FILE][,facility=16] (RFC 5424; tcp:// for plain TCP); decisions=false leaves decisions out", func(v string) error {
		_, err := parseSIEM(v)
		return err
	})
	f.receiverLease = cliflag.Duration(fs, "receiver-lease", outbox.DefaultLease, "how long a collector's claim to deliver to a receiver lasts unrenewed: how soon another collector sharing the database takes over from one that stopped")
	f.retryMin = cliflag.Duration(fs, "receiver-retry-min", outbox.DefaultMinBackoff, "the first pause after a failed delivery; it doubles with each failure up to --receiver-retry-max")
	f.retryMax = cliflag.Duration(fs, "receiver-retry-max", outbox.DefaultMaxBackoff, "the longest pause between attempts to a receiver that fails")
	f.downAfter = cliflag.Duration(fs, "receiver-down-after", outbox.DefaultDownAfter, "a receiver whose deliveries fail this long is marked down (stats, metrics); it is still retried")
	cliflag.Func(fs, "outbox-retention", "duration", "7d", "how long a message waits for a receiver that does not take it (whole days as 7d, or a duration)", func(s string) error {
		d, err := parseRetention(s)
		if err == nil && d == 0 {
			err = fmt.Errorf("%q: messages cannot wait forever; give a duration", s)
		}
		f.outboxRetention = d
		return err
	})
	f.ssfIssuer = fs.String("ssf-issuer", "", "turn the Shared Signals transmitter on: the https URL receivers (Okta) know it by, the iss of every Security Event Token; needs --ssf-listen")
	f.ssfListen = fs.String("ssf-listen", "", "serve the transmitter's endpoints (/.well-known/ssf-configuration, JWKS, stream management) on ADDR, with TLS from the collector CA")
	f.ssfPlaintext = fs.Bool("ssf-plaintext", false, "serve --ssf-listen in plain HTTP, for a proxy on the same host that terminates TLS; allowed only on a loopback address")
	return f
}

// config is the collector's EventsConfig the flags give.
func (f *eventsFlags) config() (collector.EventsConfig, error) {
	cfg := collector.EventsConfig{ReceiverLease: *f.receiverLease, RetryMin: *f.retryMin, RetryMax: *f.retryMax, DownAfter: *f.downAfter, OutboxRetention: f.outboxRetention}
	cfg.SSF = collector.SSFConfig{Issuer: *f.ssfIssuer, Listen: *f.ssfListen, Plaintext: *f.ssfPlaintext}
	for _, v := range *f.siems {
		x, err := parseSIEM(v)
		if err != nil {
			return cfg, fmt.Errorf("--siem %q: %w", v, err)
		}
		cfg.SIEM = append(cfg.SIEM, x)
	}
	for _, v := range *f.webhooks {
		w, err := parseWebhook(v)
		if err != nil {
			return cfg, fmt.Errorf("--webhook %q: %w", v, err)
		}
		cfg.Webhooks = append(cfg.Webhooks, w)
	}
	return cfg, nil
}

// keyValues reads name=value pairs separated by commas.
func keyValues(v string, known ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		found := false
		for _, kn := range known {
			found = found || kn == k
		}
		if !found {
			return nil, fmt.Errorf("unknown key %q (known: %s)", k, strings.Join(known, ", "))
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s given twice", k)
		}
		out[k] = val
	}
	return out, nil
}

func parseWebhook(v string) (webhook.Config, error) {
	kv, err := keyValues(v, "name", "url", "secret-file", "events", "timeout")
	if err != nil {
		return webhook.Config{}, err
	}
	if kv["name"] == "" || kv["url"] == "" || kv["secret-file"] == "" {
		return webhook.Config{}, fmt.Errorf("name, url and secret-file are required")
	}
	secret, err := readSecretFile(kv["secret-file"])
	if err != nil {
		return webhook.Config{}, err
	}
	w := webhook.Config{Name: kv["name"], URL: kv["url"], Secret: secret}
	if e := kv["events"]; e != "" {
		w.Events = strings.Split(e, ";")
	}
	if t := kv["timeout"]; t != "" {
		if w.Timeout, err = time.ParseDuration(t); err != nil || w.Timeout <= 0 {
			return webhook.Config{}, fmt.Errorf("timeout %q: give a duration such as 10s", t)
		}
	}
	return w, nil
}

// readSecretFile reads a secret that must not be readable by others.
func readSecretFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v; it holds a secret: chmod 600 it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return []byte(strings.TrimSpace(string(data))), nil
}

func parseSIEM(v string) (siem.Config, error) {
	kv, err := keyValues(v, "name", "file", "max-size", "keep", "syslog", "ca", "facility", "decisions")
	if err != nil {
		return siem.Config{}, err
	}
	c := siem.Config{Name: kv["name"], File: kv["file"], Syslog: kv["syslog"], SyslogCA: kv["ca"]}
	if s := kv["max-size"]; s != "" {
		if c.MaxSize, err = parseSize(s); err != nil {
			return siem.Config{}, err
		}
	}
	if s := kv["keep"]; s != "" {
		if c.Keep, err = strconv.Atoi(s); err != nil || c.Keep < 1 {
			return siem.Config{}, fmt.Errorf("keep %q: give a number of files, at least 1", s)
		}
	}
	if s := kv["facility"]; s != "" {
		if c.Facility, err = strconv.Atoi(s); err != nil {
			return siem.Config{}, fmt.Errorf("facility %q: give a number from 0 to 23 (16 is local0)", s)
		}
	}
	if s := kv["decisions"]; s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return siem.Config{}, fmt.Errorf("decisions %q: give true or false", s)
		}
		c.Decisions = &b
	}
	return c, nil
}

// parseSize reads a size: bytes, or with KB, MB or GB (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30} {
		if n, ok := strings.CutSuffix(strings.ToUpper(s), suffix); ok {
			s, mult = n, m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: give bytes, or a number with KB, MB or GB", s)
	}
	return n * mult, nil
}
