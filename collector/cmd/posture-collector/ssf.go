package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/posture-project/posture/internal/inert"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The commands for what leaves Posture: devices bound to their users,
// Shared Signals receivers and streams.

func ssfCommand(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("missing subcommand: ssf receiver add|list|remove, ssf stream create|list|delete\n\n%s", usage)
	}
	switch args[0] {
	case "receiver":
		return sub(args[1:], map[string]func([]string, io.Writer) error{"add": ssfReceiverAdd, "list": ssfReceiverList, "remove": ssfReceiverRemove}, out)
	case "stream":
		return sub(args[1:], map[string]func([]string, io.Writer) error{"create": ssfStreamCreate, "list": ssfStreamList, "delete": ssfStreamDelete}, out)
	}
	if isHelp(args[0]) {
		fmt.Fprint(out, usage)
		return nil
	}
	return fmt.Errorf("unknown subcommand %q: ssf receiver …, ssf stream …\n\n%s", args[0], usage)
}

func devicesBind(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices bind", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	email := fs.String("email", "", "the user's email address, as the identity provider knows it")
	issuer := fs.String("issuer", "", "the identity provider's issuer URL (with --subject)")
	subject := fs.String("subject", "", "the user's subject (sub) at that issuer")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (*email == "" && (*issuer == "" || *subject == "")) {
		return errors.New("usage: posture-collector devices bind ID --email ADDRESS [--issuer URL --subject SUB]")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	if _, err := a.adm.BindDeviceUser(a.ctx, &posturev1.BindDeviceUserRequest{DeviceId: pos[0], User: &posturev1.DeviceUser{Email: *email, Issuer: *issuer, Subject: *subject}}); err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "device %s bound to %s\n", pos[0], strings.TrimSpace(*email+" "+*issuer+" "+*subject))
	return nil
}

func devicesUnbind(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devices unbind", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector devices unbind ID")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	if _, err := a.adm.UnbindDeviceUser(a.ctx, &posturev1.UnbindDeviceUserRequest{DeviceId: pos[0]}); err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "device %s bound to no user\n", pos[0])
	return nil
}

func ssfReceiverAdd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf receiver add", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	audience := fs.String("audience", "", "the aud of the SETs its streams get: the receiver's issuer or URL, as it expects (required)")
	level := fs.String("level", "", "the access level whose gain or loss its streams hear of as device compliance (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *audience == "" || *level == "" {
		return errors.New("usage: posture-collector ssf receiver add NAME --audience AUD --level LEVEL")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.AddSSFReceiver(a.ctx, &posturev1.AddSSFReceiverRequest{Name: pos[0], Audience: *audience, Level: *level})
	if err != nil {
		return rpcErr(err)
	}
	fmt.Fprintln(out, resp.GetToken())
	fmt.Fprintln(os.Stderr, "the receiver's bearer token for the stream management API; it is not kept and cannot be shown again")
	return nil
}

func ssfReceiverList(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf receiver list", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "table", "json")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ListSSFReceivers(a.ctx, &posturev1.ListSSFReceiversRequest{})
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
	t := newTable(out, "NAME", "AUDIENCE", "LEVEL", "ADDED")
	for _, r := range resp.GetReceivers() {
		t.row(r.GetName(), r.GetAudience(), r.GetLevel(), r.GetCreatedAt().AsTime().Local().Format(time.RFC3339))
	}
	return t.flush()
}

func ssfReceiverRemove(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf receiver remove", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector ssf receiver remove NAME")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.RemoveSSFReceiver(a.ctx, &posturev1.RemoveSSFReceiverRequest{Name: pos[0]})
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "removed %s and its %d stream(s)\n", pos[0], resp.GetStreamsDeleted())
	return nil
}

func ssfStreamCreate(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf stream create", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	receiver := fs.String("receiver", "", "the receiver (ssf receiver add) the stream is for (required)")
	endpoint := fs.String("endpoint", "", "the URL SETs are pushed to, such as https://ORG.okta.com/security/api/v1/security-events (required)")
	authz := fs.String("authorization", "", "an Authorization header sent with every push, when the receiver asks for one")
	events := fs.String("events", "", "event type URIs, comma-separated (default: every supported)")
	desc := fs.String("description", "", "a note kept with the stream")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *receiver == "" || *endpoint == "" {
		return errors.New("usage: posture-collector ssf stream create --receiver NAME --endpoint URL [--authorization HEADER] [--events URI,…]")
	}
	req := &posturev1.CreateSSFStreamRequest{Receiver: *receiver, EndpointUrl: *endpoint, AuthorizationHeader: *authz, Description: *desc}
	if *events != "" {
		req.EventsRequested = strings.Split(*events, ",")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	s, err := a.adm.CreateSSFStream(a.ctx, req)
	if err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "stream %s: %s gets %s at %s\n", s.GetStreamId(), s.GetReceiver(), strings.Join(s.GetEventsDelivered(), ", "), s.GetEndpointUrl())
	return nil
}

func ssfStreamList(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf stream list", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "table", "json")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ListSSFStreams(a.ctx, &posturev1.ListSSFStreamsRequest{})
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
	t := newTable(out, "STREAM", "RECEIVER", "STATUS", "DELIVERY", "PENDING", "ENDPOINT", "LAST ERROR")
	for _, s := range resp.GetStreams() {
		d := s.GetDelivery()
		t.row(s.GetStreamId(), s.GetReceiver(), s.GetStatus(), orDash(d.GetState()), d.GetPending(), s.GetEndpointUrl(), orDash(d.GetLastError()))
	}
	return t.flush()
}

func ssfStreamDelete(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ssf stream delete", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: posture-collector ssf stream delete STREAM-ID")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	if _, err := a.adm.DeleteSSFStream(a.ctx, &posturev1.DeleteSSFStreamRequest{StreamId: pos[0]}); err != nil {
		return rpcErr(err)
	}
	inert.Fprintf(out, "stream %s deleted\n", pos[0])
	return nil
}
