"""Write the JSON Schemas (draft 2020-12) of what cal-relay publishes, one file per trigger:
the envelope {triggerEvent, createdAt, payload} with that trigger's payload. Written from
Cal.com's documentation and sending code (what fields each trigger carries); lenient as
Cal.com is: additional properties are allowed everywhere, and `required` lists only what every
delivery of the trigger carries. MEETING_STARTED/MEETING_ENDED describe the body after the
relay wrapped it, and the enveloped shapes of the scheduled and queued paths. Run `python3 schemas/generate.py` after editing; the files are committed and
embedded in the binary (`cal-relay schema`).
"""

import json
import pathlib

BASE = "https://cal-relay.dev/schemas/"
HERE = pathlib.Path(__file__).parent

S = {"type": "string"}
S_NULL = {"type": ["string", "null"]}
I = {"type": "integer"}
I_NULL = {"type": ["integer", "null"]}
N = {"type": "number"}
B = {"type": "boolean"}
B_NULL = {"type": ["boolean", "null"]}
O = {"type": "object"}
O_NULL = {"type": ["object", "null"]}
TIME = {"type": "string", "format": "date-time"}
PERSON = {
    "type": "object",
    "properties": {
        "id": I,
        "name": S_NULL,
        "email": S,
        "username": S_NULL,
        "timeZone": S,
        "language": {"type": "object", "properties": {"locale": S}},
        "timeFormat": S,
        "utcOffset": N,
    },
}

# A booking as booking triggers carry it (CalendarEvent plus booking fields).
BOOKING = {
    "type": "object",
    "properties": {
        "type": S,
        "title": S,
        "description": S_NULL,
        "additionalNotes": S_NULL,
        "customInputs": O_NULL,
        "startTime": TIME,
        "endTime": TIME,
        "organizer": PERSON,
        "attendees": {"type": "array", "items": PERSON},
        "responses": O,
        "userFieldsResponses": O,
        "location": S_NULL,
        "destinationCalendar": {"type": ["object", "array", "null"]},
        "hideCalendarNotes": B,
        "requiresConfirmation": B_NULL,
        "eventTypeId": I_NULL,
        "seatsShowAttendees": B_NULL,
        "seatsPerTimeSlot": I_NULL,
        "seatsShowAvailabilityCount": B_NULL,
        "schedulingType": S_NULL,
        "iCalUID": S_NULL,
        "iCalSequence": I_NULL,
        "uid": S,
        "bookingId": I,
        "eventTitle": S_NULL,
        "eventDescription": S_NULL,
        "price": N,
        "currency": S,
        "length": I_NULL,
        "status": S,
        "metadata": {"type": "object", "properties": {"videoCallUrl": S}},
        "videoCallData": O,
        "appsStatus": {"type": "array"},
        "conferenceData": O,
        "attendeeIcsContent": S,
        "organizerIcsContent": S,
    },
    "required": ["title", "startTime", "endTime", "organizer", "attendees"],
}


def booking(extra=None, required=()):
    p = json.loads(json.dumps(BOOKING))
    p["properties"].update(extra or {})
    p["required"] = p["required"] + list(required)
    return p


def obj(properties, required=()):
    out = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


FORM = obj({"formId": S, "formName": S, "responses": O, "teamId": I_NULL, "redirect": O_NULL, "createdAt": TIME}, ["formId", "responses"])
NO_SHOW_VIDEO = obj(
    {
        "title": S,
        "bookingId": I,
        "bookingUid": S,
        "startTime": TIME,
        "endTime": TIME,
        "participants": {"type": "array"},
        "message": S,
        "webhook": O,
    },
    ["bookingUid"],
)
# DELEGATION_CREDENTIAL_ERROR: {error, credential, user}; the rotation triggers:
# {delegationCredential[, error]}. No booking.
DELEGATION = obj({"error": O, "credential": O, "user": O, "delegationCredential": O})

PAYLOADS = {
    "BOOKING_CREATED": booking(),
    "BOOKING_REQUESTED": booking(),
    "BOOKING_RESCHEDULED": booking(
        {"rescheduleId": I, "rescheduleUid": S, "rescheduleStartTime": TIME, "rescheduleEndTime": TIME, "rescheduledBy": S}
    ),
    "BOOKING_CANCELLED": booking({"cancellationReason": S_NULL, "cancelledBy": S}),
    "BOOKING_REJECTED": booking({"rejectionReason": S_NULL}),
    "BOOKING_PAYMENT_INITIATED": booking({"paymentId": I, "paymentData": O}),
    "BOOKING_PAID": booking({"paymentId": I, "paymentData": O}),
    "BOOKING_REASSIGNED": booking({"reassignedBy": S}),
    "BOOKING_LOCATION_UPDATED": booking(),
    "BOOKING_NO_SHOW_UPDATED": obj(
        {
            "message": S,
            "bookingUid": S,
            "bookingId": I,
            "attendees": {"type": "array", "items": obj({"email": S, "noShow": B})},
        },
        ["bookingUid", "attendees"],
    ),
    "RECORDING_READY": booking({"downloadLink": S}, ["downloadLink"]),
    "RECORDING_TRANSCRIPTION_GENERATED": booking({"downloadLinks": O}, ["downloadLinks"]),
    "INSTANT_MEETING": obj({"title": S, "body": S, "icon": S, "url": S, "actions": {"type": "array"}, "requireInteraction": B, "type": S, "tag": S}),
    "INSTANT_MEETING_ACCEPTED": booking(),
    # Three shapes, one per sending path: the booking row (flat, wrapped by the relay, or the
    # newer scheduled envelope; the smallest flat form Cal.com sends is {id, startTime,
    # endTime}), or the queued (Tasker) task {bookingId, eventTypeId, userId, teamId,
    # responses, evt:{title, uid, startTime, ...}}.
    "MEETING_STARTED": {
        "type": "object",
        "properties": {
            "id": I,
            "uid": S,
            "title": S,
            "startTime": TIME,
            "endTime": TIME,
            "attendees": {"type": "array"},
            "user": O_NULL,
            "eventType": O_NULL,
            "status": S,
            "createdAt": TIME,
            "bookingId": I,
            "eventTypeId": I_NULL,
            "userId": I_NULL,
            "teamId": I_NULL,
            "responses": O,
            "evt": obj({"title": S, "uid": S, "startTime": TIME, "endTime": TIME}),
        },
        "anyOf": [
            {"required": ["id", "startTime", "endTime"]},
            {"required": ["bookingId", "evt"], "properties": {"evt": {"required": ["uid"]}}},
        ],
    },
    "OOO_CREATED": obj({"oooEntry": obj({"id": I, "uuid": S, "start": TIME, "end": TIME, "createdAt": TIME, "updatedAt": TIME, "notes": S_NULL, "reason": O_NULL, "reasonId": I_NULL, "user": O, "toUser": O_NULL})}, ["oooEntry"]),
    "FORM_SUBMITTED": FORM,
    "FORM_SUBMITTED_NO_EVENT": FORM,
    "ROUTING_FORM_FALLBACK_HIT": obj({"formId": S, "formName": S, "responses": O, "fallbackAction": O}, ["formId"]),
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW": NO_SHOW_VIDEO,
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW": NO_SHOW_VIDEO,
    "DELEGATION_CREDENTIAL_ERROR": DELEGATION,
    "DELEGATION_CREDENTIAL_SECRET_ROTATION_FAILED": DELEGATION,
    "DELEGATION_CREDENTIAL_ROTATION_REQUIRED": DELEGATION,
    "DELEGATION_CREDENTIAL_SECRET_ROTATED": DELEGATION,
    # As Cal.com's builder writes it: the booking (its uid is the key) and the report.
    "WRONG_ASSIGNMENT_REPORT": obj(
        {
            "booking": obj(
                {"uid": S, "id": I, "title": S, "startTime": TIME, "endTime": TIME, "status": S, "eventType": O_NULL},
                ["uid"],
            ),
            "report": obj(
                {
                    "reportedBy": O_NULL,
                    "firstAssignmentReason": S_NULL,
                    "guest": S_NULL,
                    "host": O_NULL,
                    "correctAssignee": S_NULL,
                    "additionalNotes": S_NULL,
                }
            ),
        },
        ["booking", "report"],
    ),
    "CALENDAR_ENTRY_REJECTED": O,
    "PING": obj({"type": S, "title": S, "startTime": TIME, "endTime": TIME, "attendees": {"type": "array"}, "organizer": O}),
}
PAYLOADS["MEETING_ENDED"] = PAYLOADS["MEETING_STARTED"]


def envelope(trigger, payload):
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE}{trigger}.json",
        "title": f"{trigger} as cal-relay publishes it",
        "type": "object",
        "properties": {
            "triggerEvent": {"const": trigger},
            "createdAt": TIME,
            "payload": payload,
        },
        "required": ["triggerEvent", "createdAt", "payload"],
    }


def main():
    for trigger, payload in sorted(PAYLOADS.items()):
        path = HERE / f"{trigger}.json"
        path.write_text(json.dumps(envelope(trigger, payload), indent=2) + "\n")
    generic = envelope("TRIGGER", O)
    generic["$id"] = f"{BASE}envelope.json"
    generic["title"] = "The envelope of every trigger"
    generic["properties"]["triggerEvent"] = {"type": "string", "pattern": "^[A-Za-z0-9_]+$"}
    (HERE / "envelope.json").write_text(json.dumps(generic, indent=2) + "\n")


if __name__ == "__main__":
    main()
