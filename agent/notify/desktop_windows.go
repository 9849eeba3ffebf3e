package notify

import (
	"context"
	"encoding/base64"
	"fmt"
	"os/exec"
	"strings"
	"time"
	"unicode/utf16"
	"unsafe"

	"golang.org/x/sys/windows"
)

// winDesktop shows a toast through Windows.UI.Notifications, from a
// PowerShell script run in the active console session: as the system
// service (session 0, which has no desktop) with the console user's token
// (WTSQueryUserToken), else directly.
type winDesktop struct{}

// New is this machine's desktop.
func New() Desktop { return winDesktop{} }

// psString quotes s as a PowerShell single-quoted string.
func psString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// xmlText escapes s for the toast's XML.
func xmlText(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// toastScript shows one toast, attributed to PowerShell (an application
// Windows knows, so that the toast is shown without registering one).
func toastScript(title, body string) string {
	xml := "<toast><visual><binding template='ToastGeneric'><text>" + xmlText(title) + "</text><text>" + xmlText(body) + "</text></binding></visual></toast>"
	return `[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime] > $null
[Windows.Data.Xml.Dom.XmlDocument, Windows.Data.Xml.Dom.XmlDocument, ContentType = WindowsRuntime] > $null
$x = New-Object Windows.Data.Xml.Dom.XmlDocument
$x.LoadXml(` + psString(xml) + `)
$t = [Windows.UI.Notifications.ToastNotification]::new($x)
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier('{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\WindowsPowerShell\v1.0\powershell.exe').Show($t)`
}

// encoded is a script as powershell -EncodedCommand takes it.
func encoded(script string) string {
	u := utf16.Encode([]rune(script))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		b[2*i], b[2*i+1] = byte(c), byte(c>>8)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func (winDesktop) Notify(title, body string) error {
	args := "powershell.exe -NoProfile -NonInteractive -WindowStyle Hidden -EncodedCommand " + encoded(toastScript(title, body))
	var sid uint32
	if err := windows.ProcessIdToSessionId(windows.GetCurrentProcessId(), &sid); err == nil && sid != 0 {
		// A user's own process: its session has the desktop.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "powershell.exe", "-NoProfile", "-NonInteractive", "-WindowStyle", "Hidden", "-EncodedCommand", encoded(toastScript(title, body)))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("show the toast: %v: %s", err, out)
		}
		return nil
	}
	console := windows.WTSGetActiveConsoleSessionId()
	if console == 0xFFFFFFFF {
		return ErrNoSession
	}
	var token windows.Token
	if err := windows.WTSQueryUserToken(console, &token); err != nil {
		return ErrNoSession // nobody logged in at the console
	}
	defer token.Close()
	var env *uint16
	if err := windows.CreateEnvironmentBlock(&env, token, false); err != nil {
		return fmt.Errorf("the console user's environment: %w", err)
	}
	defer windows.DestroyEnvironmentBlock(env)
	cmdline, err := windows.UTF16PtrFromString(args)
	if err != nil {
		return err
	}
	desktop, _ := windows.UTF16PtrFromString(`winsta0\default`)
	si := windows.StartupInfo{Cb: uint32(unsafe.Sizeof(windows.StartupInfo{})), Desktop: desktop}
	var pi windows.ProcessInformation
	if err := windows.CreateProcessAsUser(token, nil, cmdline, nil, nil, false, windows.CREATE_UNICODE_ENVIRONMENT|windows.CREATE_NO_WINDOW, env, nil, &si, &pi); err != nil {
		return fmt.Errorf("run the toast in the console session: %w", err)
	}
	windows.CloseHandle(pi.Thread)
	defer windows.CloseHandle(pi.Process)
	windows.WaitForSingleObject(pi.Process, 15000)
	return nil
}
