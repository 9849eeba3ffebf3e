package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The commands for what leaves Posture: devices bound to their users,
// Shared Signals receivers and streams.

func newSSFCommand() *cobra.Command {
	receiver := group("receiver", "Add, list and remove Shared Signals receivers (Okta, any SSF receiver)",
		ssfReceiverAddCommand(), ssfReceiverListCommand(), ssfReceiverRemoveCommand())
	stream := group("stream", "Create, list and delete the streams that push Security Event Tokens to receivers",
		ssfStreamCreateCommand(), ssfStreamListCommand(), ssfStreamDeleteCommand())
	c := group("ssf", "Shared Signals: receivers and the streams of Security Event Tokens pushed to them (docs/ssf.md)", receiver, stream)
	c.Long = `Shared Signals: receivers and the streams of Security Event Tokens pushed
to them. The transmitter itself is turned on by run's --ssf-issuer and
--ssf-listen (docs/ssf.md).`
	return c
}

func devicesBindCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bind ID --email ADDRESS [--issuer URL --subject SUB]",
		Short: "Bind a device to its user, whom Shared Signals receivers hear of",
		Long:  "Bind a device to its user, whom Shared Signals receivers hear of. ID is a device ID or a unique prefix of one.",
		Args:  exactArgs(1, "posture-collector devices bind ID --email ADDRESS [--issuer URL --subject SUB]"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	email := cmd.Flags().String("email", "", "the user's email address, as the identity provider knows it")
	issuer := cmd.Flags().String("issuer", "", "the identity provider's issuer URL (with --subject)")
	subject := cmd.Flags().String("subject", "", "the user's subject (sub) at that issuer")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *email == "" && (*issuer == "" || *subject == "") {
			return usagef("usage: posture-collector devices bind ID --email ADDRESS [--issuer URL --subject SUB]: give --email, or --issuer and --subject")
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			p, _, err := a.resolveDevice(args[0])
			if err != nil {
				return err
			}
			id := p.GetDevice().GetId()
			if _, err := a.adm.BindDeviceUser(a.ctx, &posturev1.BindDeviceUserRequest{DeviceId: id, User: &posturev1.DeviceUser{Email: *email, Issuer: *issuer, Subject: *subject}}); err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "device %s bound to %s\n", id, strings.TrimSpace(*email+" "+*issuer+" "+*subject))
			return nil
		})
	}
	return cmd
}

func devicesUnbindCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unbind ID",
		Short: "Unbind a device from its user",
		Long:  "Unbind a device from its user. ID is a device ID or a unique prefix of one.",
		Args:  exactArgs(1, "posture-collector devices unbind ID"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			p, _, err := a.resolveDevice(args[0])
			if err != nil {
				return err
			}
			id := p.GetDevice().GetId()
			if _, err := a.adm.UnbindDeviceUser(a.ctx, &posturev1.UnbindDeviceUserRequest{DeviceId: id}); err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "device %s bound to no user\n", id)
			return nil
		})
	}
	return cmd
}

func ssfReceiverAddCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "add NAME --audience AUD --level LEVEL",
		Short: "Add a Shared Signals receiver; prints its API token",
		Args:  exactArgs(1, "posture-collector ssf receiver add NAME --audience AUD --level LEVEL"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	audience := cmd.Flags().String("audience", "", "the aud of the SETs its streams get: the receiver's issuer or URL, as it expects (required)")
	level := cmd.Flags().String("level", "", "the access level whose gain or loss its streams hear of as device compliance (required)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *audience == "" || *level == "" {
			return usagef("usage: posture-collector ssf receiver add NAME --audience AUD --level LEVEL")
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.AddSSFReceiver(a.ctx, &posturev1.AddSSFReceiverRequest{Name: args[0], Audience: *audience, Level: *level})
			if err != nil {
				return rpcErr(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			fmt.Fprintln(cmd.ErrOrStderr(), "the receiver's bearer token for the stream management API; it is not kept and cannot be shown again")
			return nil
		})
	}
	return cmd
}

func ssfReceiverListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the Shared Signals receivers",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.ListSSFReceivers(a.ctx, &posturev1.ListSSFReceiversRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "NAME", "AUDIENCE", "LEVEL", "ADDED")
			for _, r := range resp.GetReceivers() {
				t.row(r.GetName(), r.GetAudience(), r.GetLevel(), r.GetCreatedAt().AsTime().Local().Format(time.RFC3339))
			}
			return t.flush()
		})
	}
	return cmd
}

func ssfReceiverRemoveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a Shared Signals receiver and its streams",
		Args:  exactArgs(1, "posture-collector ssf receiver remove NAME"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.RemoveSSFReceiver(a.ctx, &posturev1.RemoveSSFReceiverRequest{Name: args[0]})
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "removed %s and its %d stream(s)\n", args[0], resp.GetStreamsDeleted())
			return nil
		})
	}
	return cmd
}

func ssfStreamCreateCommand() *cobra.Command {
	const use = "posture-collector ssf stream create --receiver NAME --endpoint URL [--authorization HEADER] [--events URI,…]"
	cmd := &cobra.Command{
		Use:   "create --receiver NAME --endpoint URL",
		Short: "Push Security Event Tokens to a receiver's endpoint (Okta)",
		Args:  noArgs,
	}
	fs := cmd.Flags()
	dataDir := dataDirFlag(fs)
	receiver := fs.String("receiver", "", "the receiver (ssf receiver add) the stream is for (required)")
	endpoint := fs.String("endpoint", "", "the URL SETs are pushed to, such as https://ORG.okta.com/security/api/v1/security-events (required)")
	authz := fs.String("authorization", "", "an Authorization header sent with every push, when the receiver asks for one")
	events := fs.StringSlice("events", nil, "event type URIs, comma-separated (default: every supported)")
	desc := fs.String("description", "", "a note kept with the stream")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *receiver == "" || *endpoint == "" {
			return usagef("usage: %s", use)
		}
		req := &posturev1.CreateSSFStreamRequest{Receiver: *receiver, EndpointUrl: *endpoint, AuthorizationHeader: *authz, Description: *desc, EventsRequested: *events}
		return withAdmin(*dataDir, func(a *adminConn) error {
			s, err := a.adm.CreateSSFStream(a.ctx, req)
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "stream %s: %s gets %s at %s\n", s.GetStreamId(), s.GetReceiver(), strings.Join(s.GetEventsDelivered(), ", "), s.GetEndpointUrl())
			return nil
		})
	}
	return cmd
}

func ssfStreamListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the streams, their delivery state and last error",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.ListSSFStreams(a.ctx, &posturev1.ListSSFStreamsRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "STREAM", "RECEIVER", "STATUS", "DELIVERY", "PENDING", "ENDPOINT", "LAST ERROR")
			for _, s := range resp.GetStreams() {
				d := s.GetDelivery()
				t.row(s.GetStreamId(), s.GetReceiver(), s.GetStatus(), orDash(d.GetState()), d.GetPending(), s.GetEndpointUrl(), orDash(d.GetLastError()))
			}
			return t.flush()
		})
	}
	return cmd
}

func ssfStreamDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete STREAM-ID",
		Short: "Delete a stream",
		Args:  exactArgs(1, "posture-collector ssf stream delete STREAM-ID"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			if _, err := a.adm.DeleteSSFStream(a.ctx, &posturev1.DeleteSSFStreamRequest{StreamId: args[0]}); err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "stream %s deleted\n", args[0])
			return nil
		})
	}
	return cmd
}
