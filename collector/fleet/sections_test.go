package fleet

import (
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A report's measurement time is its newest section, whichever that is:
// every section of the report, found from the descriptors so that one
// added to the proto is tested without being named here, moves it.
func TestMeasuredAtReadsEverySection(t *testing.T) {
	received := time.Date(2025, 5, 20, 12, 0, 0, 0, time.UTC)
	observed := received.Add(-time.Hour)
	md := (&posturev1.PostureReport{}).ProtoReflect().Descriptor()
	metaName := (&posturev1.SignalMeta{}).ProtoReflect().Descriptor().FullName()
	n := 0
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		if fd.Kind() != protoreflect.MessageKind {
			continue
		}
		meta := fd.Message().Fields().ByName("meta")
		if meta == nil || meta.Message() == nil || meta.Message().FullName() != metaName {
			continue
		}
		n++
		t.Run(string(fd.Name()), func(t *testing.T) {
			r := &posturev1.PostureReport{}
			section := r.ProtoReflect().Mutable(fd).Message()
			m := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(observed)}
			section.Set(meta, protoreflect.ValueOfMessage(m.ProtoReflect()))
			if got := measuredAt(r, received); !got.Equal(observed) {
				t.Errorf("measuredAt = %v with only %s observed at %v: add the section to measuredAt", got, fd.Name(), observed)
			}
		})
	}
	if n < 9 {
		t.Fatalf("found %d sections; the walk of the report's descriptors is broken", n)
	}
}
