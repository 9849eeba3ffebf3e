package signals

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"strings"

	"github.com/go-ole/go-ole"
	"github.com/go-ole/go-ole/oleutil"
	"github.com/yusufpapurcu/wmi"
	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/registry"
)

// platformSources returns the real registry and WMI.
func platformSources() (registryReader, wmiQuerier) {
	// Classes gain properties across Windows releases (AMRunningMode):
	// a property the class lacks, or a null, leaves the field zero.
	return winRegistry{}, winWMI{client: &wmi.Client{AllowMissingFields: true, NonePtrZero: true}}
}

// winRegistry reads the registry with golang.org/x/sys/windows/registry.
type winRegistry struct{}

func openKey(key string, access uint32) (registry.Key, error) {
	hive, path, _ := strings.Cut(key, `\`)
	var root registry.Key
	switch hive {
	case "HKLM":
		root = registry.LOCAL_MACHINE
	case "HKU":
		root = registry.USERS
	default:
		return 0, fmt.Errorf("registry hive %q is not read by the agent: %w", hive, errors.ErrUnsupported)
	}
	k, err := registry.OpenKey(root, path, access)
	switch {
	case errors.Is(err, registry.ErrNotExist):
		return 0, fmt.Errorf("%w", fs.ErrNotExist)
	case errors.Is(err, windows.ERROR_ACCESS_DENIED):
		return 0, fmt.Errorf("%v: %w", err, errAccessDenied)
	}
	return k, err
}

func (winRegistry) Values(key string, names ...string) (map[string]any, error) {
	k, err := openKey(key, registry.QUERY_VALUE)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	out := make(map[string]any, len(names))
	for _, name := range names {
		_, typ, err := k.GetValue(name, nil)
		if errors.Is(err, registry.ErrNotExist) {
			continue
		}
		if err != nil && !errors.Is(err, windows.ERROR_MORE_DATA) {
			return nil, fmt.Errorf("value %s: %w", name, err)
		}
		switch typ {
		case registry.SZ, registry.EXPAND_SZ:
			s, _, err := k.GetStringValue(name)
			if err != nil {
				return nil, fmt.Errorf("value %s: %w", name, err)
			}
			out[name] = s
		case registry.DWORD, registry.QWORD:
			n, _, err := k.GetIntegerValue(name)
			if err != nil {
				return nil, fmt.Errorf("value %s: %w", name, err)
			}
			out[name] = n
		}
	}
	return out, nil
}

func (winRegistry) SubKeys(key string) ([]string, error) {
	var k registry.Key
	var err error
	if key == "HKU" {
		k = registry.USERS
	} else if k, err = openKey(key, registry.ENUMERATE_SUB_KEYS); err != nil {
		return nil, err
	} else {
		defer k.Close()
	}
	return k.ReadSubKeyNames(-1)
}

// winWMI queries WMI with github.com/yusufpapurcu/wmi, and calls
// BitLocker's methods with go-ole.
type winWMI struct{ client *wmi.Client }

func (w winWMI) Query(namespace, query string, dst any) error {
	return wmiError(w.client.Query(query, dst, nil, namespace))
}

// WMI error codes (WbemErrorEnum) and HRESULTs the agent distinguishes.
const (
	wbemAccessDenied     = 0x80041003
	wbemInvalidNamespace = 0x8004100E
	wbemInvalidClass     = 0x80041010
	eAccessDenied        = 0x80070005
)

// wmiError maps WMI failures to errAccessDenied and fs.ErrNotExist. A
// failed IDispatch call carries the WMI code in its EXCEPINFO.
func wmiError(err error) error {
	var oe *ole.OleError
	if !errors.As(err, &oe) {
		return err
	}
	code := uint32(oe.Code())
	if ei, ok := oe.SubError().(ole.EXCEPINFO); ok && ei.SCODE() != 0 {
		code = ei.SCODE()
	}
	switch code {
	case wbemAccessDenied, eAccessDenied:
		return fmt.Errorf("%v (%#x): %w", err, code, errAccessDenied)
	case wbemInvalidNamespace, wbemInvalidClass:
		return fmt.Errorf("%v (%#x): %w", err, code, fs.ErrNotExist)
	}
	return fmt.Errorf("WMI error %#x: %w", code, err)
}

const (
	bitLockerNamespace = `ROOT\CIMV2\Security\MicrosoftVolumeEncryption`
	// wbemAuthenticationLevelPktPrivacy is WbemAuthenticationLevelEnum's
	// packet privacy level.
	wbemAuthenticationLevelPktPrivacy = 6
)

// EncryptableVolumes lists Win32_EncryptableVolume and calls the methods
// that report each volume's live state.
func (winWMI) EncryptableVolumes() (vols []encryptableVolume, err error) {
	// COM is initialized per OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := ole.CoInitializeEx(0, ole.COINIT_MULTITHREADED); err != nil {
		var oe *ole.OleError
		// S_FALSE: already initialized on this thread.
		if !errors.As(err, &oe) || (oe.Code() != ole.S_OK && oe.Code() != 1) {
			return nil, fmt.Errorf("initialize COM: %w", err)
		}
	}
	defer ole.CoUninitialize()

	unknown, err := oleutil.CreateObject("WbemScripting.SWbemLocator")
	if err != nil {
		return nil, fmt.Errorf("create SWbemLocator: %w", wmiError(err))
	}
	defer unknown.Release()
	locator, err := unknown.QueryInterface(ole.IID_IDispatch)
	if err != nil {
		return nil, fmt.Errorf("SWbemLocator: %w", wmiError(err))
	}
	defer locator.Release()
	svcV, err := oleutil.CallMethod(locator, "ConnectServer", nil, bitLockerNamespace)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", bitLockerNamespace, wmiError(err))
	}
	defer svcV.Clear()
	svc := svcV.ToIDispatch()
	// BitLocker's provider only answers connections with packet privacy.
	secV, err := oleutil.GetProperty(svc, "Security_")
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", bitLockerNamespace, wmiError(err))
	}
	defer secV.Clear()
	if _, err := oleutil.PutProperty(secV.ToIDispatch(), "AuthenticationLevel", wbemAuthenticationLevelPktPrivacy); err != nil {
		return nil, fmt.Errorf("set packet privacy on %s: %w", bitLockerNamespace, wmiError(err))
	}
	setV, err := oleutil.CallMethod(svc, "ExecQuery", "SELECT DeviceID, DriveLetter, VolumeType FROM Win32_EncryptableVolume")
	if err != nil {
		return nil, fmt.Errorf("query Win32_EncryptableVolume: %w", wmiError(err))
	}
	defer setV.Clear()
	err = oleutil.ForEach(setV.ToIDispatch(), func(item *ole.VARIANT) error {
		defer item.Clear()
		obj := item.ToIDispatch()
		v := encryptableVolume{
			DeviceID:    variantString(obj, "DeviceID"),
			DriveLetter: variantString(obj, "DriveLetter"),
			VolumeType:  variantUint(obj, "VolumeType"),
		}
		var errs []string
		for _, m := range []struct {
			method string
			outs   map[string]*uint32
		}{
			{"GetProtectionStatus", map[string]*uint32{"ProtectionStatus": &v.ProtectionStatus}},
			{"GetConversionStatus", map[string]*uint32{"ConversionStatus": &v.ConversionStatus, "EncryptionPercentage": &v.EncryptionPercentage,
				"EncryptionFlags": &v.EncryptionFlags, "WipingStatus": &v.WipingStatus}},
			{"GetEncryptionMethod", map[string]*uint32{"EncryptionMethod": &v.EncryptionMethod}},
		} {
			if err := callMethod(obj, m.method, m.outs); err != nil {
				errs = append(errs, err.Error())
			}
		}
		// A failure to list the protectors leaves KeyProtectorIDs nil
		// (unknown); the other results still decide.
		v.KeyProtectorIDs, _ = keyProtectorIDs(obj)
		v.MethodError = strings.Join(errs, "; ")
		vols = append(vols, v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list Win32_EncryptableVolume: %w", wmiError(err))
	}
	return vols, nil
}

// callMethod calls a WMI method through SWbemObject.ExecMethod_ and stores
// its integer output parameters in outs.
func callMethod(obj *ole.IDispatch, method string, outs map[string]*uint32) error {
	resV, err := oleutil.CallMethod(obj, "ExecMethod_", method)
	if err != nil {
		return fmt.Errorf("%s: %w", method, wmiError(err))
	}
	defer resV.Clear()
	res := resV.ToIDispatch()
	if rv := variantUint(res, "ReturnValue"); rv != 0 {
		return fmt.Errorf("%s returned %#x", method, rv)
	}
	for name, dst := range outs {
		*dst = variantUint(res, name)
	}
	return nil
}

// keyProtectorIDs calls GetKeyProtectors without a KeyProtectorType (all
// types) and returns the IDs, empty when the volume has none.
func keyProtectorIDs(obj *ole.IDispatch) ([]string, error) {
	resV, err := oleutil.CallMethod(obj, "ExecMethod_", "GetKeyProtectors")
	if err != nil {
		return nil, fmt.Errorf("GetKeyProtectors: %w", wmiError(err))
	}
	defer resV.Clear()
	res := resV.ToIDispatch()
	if rv := variantUint(res, "ReturnValue"); rv != 0 {
		return nil, fmt.Errorf("GetKeyProtectors returned %#x", rv)
	}
	idsV, err := oleutil.GetProperty(res, "VolumeKeyProtectorID")
	if err != nil {
		return nil, fmt.Errorf("GetKeyProtectors: %w", wmiError(err))
	}
	defer idsV.Clear()
	ids := []string{}
	if arr := idsV.ToArray(); arr != nil {
		ids = append(ids, arr.ToStringArray()...)
	}
	return ids, nil
}

func variantString(obj *ole.IDispatch, name string) string {
	v, err := oleutil.GetProperty(obj, name)
	if err != nil {
		return ""
	}
	defer v.Clear()
	s, _ := v.Value().(string)
	return s
}

// variantUint reads an integer property; WMI passes uint32 as VT_I4.
func variantUint(obj *ole.IDispatch, name string) uint32 {
	v, err := oleutil.GetProperty(obj, name)
	if err != nil {
		return 0
	}
	defer v.Clear()
	switch n := v.Value().(type) {
	case int32:
		return uint32(n)
	case uint32:
		return n
	case int64:
		return uint32(n)
	case uint64:
		return uint32(n)
	case int16:
		return uint32(n)
	case uint16:
		return uint32(n)
	case uint8:
		return uint32(n)
	case int8:
		return uint32(n)
	}
	return 0
}
