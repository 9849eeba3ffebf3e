package agent

import (
	"bytes"
	"encoding/json"

	"github.com/posture-project/posture/agent/spool"
)

// legacySpoolPrefix starts every entry spooled by agents that wrapped the
// report in JSON, {"report":"<base64 of the protobuf>"}. A bare protobuf
// report never starts with '{': that byte would be the tag of a group in
// field 15, which PostureReport does not have.
const legacySpoolPrefix = `{"report":`

// migrateSpool rewrites the entries an earlier agent spooled as JSON into
// the protobuf they wrap, so that measurements taken before an upgrade are
// still sent, and sending knows one encoding. An entry that does not
// decode is left as it is; sending drops it then, as it drops any entry it
// cannot read. It returns how many entries it rewrote.
func migrateSpool(s *spool.Spool) (int, error) {
	return s.Rewrite(func(data []byte) ([]byte, bool) {
		if !bytes.HasPrefix(data, []byte(legacySpoolPrefix)) {
			return nil, false
		}
		var old struct {
			Report []byte `json:"report"`
		}
		if err := json.Unmarshal(data, &old); err != nil || len(old.Report) == 0 {
			return nil, false
		}
		return old.Report, true
	})
}
