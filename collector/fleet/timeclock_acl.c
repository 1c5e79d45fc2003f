/* timeclock_acl: the SUBSCRIBE check Mosquitto 2.0's ACL file does not make, and the
 * refusal of every identity that is neither a device nor a listed collector.
 *
 * Why (docs/protocol.md §4, issue 11): Mosquitto 2.0.11's acl_file answers SUCCESS to every
 * SUBSCRIBE ("FIXME - implement ACL subscription strings", src/security_default.c) and only
 * filters at delivery. A stolen device certificate could therefore join the collectors'
 * shared subscription ($share/collectors/...): the broker round-robins punches to it and
 * drops them at the read check, after the clocks got their PUBACK.
 *
 * Rules, for an ACL check of a client with user name U (the certificate CN,
 * use_identity_as_username) and client id C (= U, use_username_as_clientid):
 *   (1) U missing, or C != U: denied, whatever the access.
 *   (2) U is "listed" (a `user U` line in the ACL file: a collector or the broker control
 *       identity) or matches plugin_opt_device_re (a device id). Anything else (an API
 *       client certificate, an unlisted collector) is denied every access.
 *   (3) SUBSCRIBE of filter F: "$share/<group>/" is allowed only to listed users and is
 *       stripped; F is then granted iff a read/readwrite rule of the ACL file that applies
 *       to U (its own `topic` lines, and every `pattern` with %u/%c substituted) covers
 *       every topic F can match. Otherwise MQTT v5 SUBACK 0x87 (not authorized).
 *   (4) UNSUBSCRIBE: granted.  (5) PUBLISH/READ: deferred to the ACL file (and the
 *       dynamic-security plugin), which decide as before.
 * The ACL file is re-read on every SUBSCRIBE (a few dozen lines; subscribes are rare), so a
 * regenerated ACL applies at once; an unreadable file denies (fail closed).
 *
 * The declarations below are the Mosquitto 2.0 plugin ABI (version 5) copied from
 * include/mosquitto_broker.h, mosquitto_plugin.h and mosquitto.h of v2.0.11, so the
 * plugin builds with a C compiler alone (collector.fleet.broker_config.build_acl_plugin).
 */
#include <regex.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mosquitto;
typedef struct mosquitto_plugin_id_t mosquitto_plugin_id_t;
typedef struct mqtt5__property mosquitto_property;
struct mosquitto_opt { char *key; char *value; };
struct mosquitto_evt_acl_check {
	void *future;
	struct mosquitto *client;
	const char *topic;
	const void *payload;
	mosquitto_property *properties;
	int access;
	uint32_t payloadlen;
	uint8_t qos;
	bool retain;
	void *future2[4];
};
typedef int (*MOSQ_FUNC_generic_callback)(int, void *, void *);
int mosquitto_callback_register(mosquitto_plugin_id_t *, int, MOSQ_FUNC_generic_callback,
                                const void *, void *);
int mosquitto_callback_unregister(mosquitto_plugin_id_t *, int, MOSQ_FUNC_generic_callback,
                                  const void *);
const char *mosquitto_client_username(const struct mosquitto *);
const char *mosquitto_client_id(const struct mosquitto *);
void mosquitto_log_printf(int level, const char *fmt, ...);

#define MOSQ_EVT_ACL_CHECK 2
#define MOSQ_ACL_READ 0x01
#define MOSQ_ACL_WRITE 0x02
#define MOSQ_ACL_SUBSCRIBE 0x04
#define MOSQ_ACL_UNSUBSCRIBE 0x08
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_ACL_DENIED 12
#define MOSQ_ERR_PLUGIN_DEFER 17
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_ERR (1 << 3)

#define MAX_LEVELS 32
#define MAX_LINE 1024

static mosquitto_plugin_id_t *plugin_id;
static char *acl_file;
static regex_t device_re;
static bool have_device_re;

int mosquitto_plugin_version(int count, const int *versions)
{
	(void)count; (void)versions;
	return 5;
}

/* Split `s` (modified in place) at '/' into at most MAX_LEVELS levels; -1 if more. */
static int split(char *s, char **levels)
{
	int n = 0;
	char *p = s;
	for(;;){
		if(n == MAX_LEVELS) return -1;
		levels[n++] = p;
		p = strchr(p, '/');
		if(!p) return n;
		*p++ = '\0';
	}
}

/* Does ACL filter `acl` (after %u/%c substitution) grant every topic filter `sub` matches? */
static bool covers(const char *acl_in, const char *sub_in, const char *user, const char *id)
{
	char acl_buf[MAX_LINE], sub_buf[MAX_LINE];
	char *a[MAX_LEVELS], *f[MAX_LEVELS];
	int na, nf, i;
	if(strlen(acl_in) >= MAX_LINE || strlen(sub_in) >= MAX_LINE) return false;
	strcpy(acl_buf, acl_in);
	strcpy(sub_buf, sub_in);
	na = split(acl_buf, a);
	nf = split(sub_buf, f);
	if(na < 0 || nf < 0) return false;
	/* Wildcards never match topics that start with '$' (MQTT 4.7.2). */
	if(f[0][0] == '$' && a[0][0] != '$') return false;
	for(i = 0; i < na; i++){
		const char *lvl = a[i];
		if(!strcmp(lvl, "%u")) lvl = user;
		else if(!strcmp(lvl, "%c")) lvl = id;
		if(!strcmp(lvl, "#")) return true;          /* the rest, whatever it is */
		if(i >= nf) return false;
		if(!strcmp(f[i], "#")) return false;         /* asks for more than one level */
		if(!strcmp(lvl, "+")) continue;             /* any one level, '+' included */
		if(strcmp(lvl, f[i])) return false;
	}
	return na == nf;
}

/* (2) and (3): 1 granted, 0 refused; *listed tells whether U has a `user` block. */
static int scan_acl(const char *user, const char *id, const char *filter, bool *listed)
{
	FILE *fp = fopen(acl_file, "r");
	char line[MAX_LINE];
	bool in_own_block = false;
	int granted = 0;
	*listed = false;
	if(!fp){
		mosquitto_log_printf(MOSQ_LOG_ERR, "timeclock_acl: cannot read %s: denying", acl_file);
		return 0;
	}
	while(fgets(line, sizeof(line), fp)){
		char *kw, *access, *topic, *save = NULL;
		size_t len = strlen(line);
		while(len && (line[len-1] == '\n' || line[len-1] == '\r' || line[len-1] == ' ')){
			line[--len] = '\0';
		}
		kw = strtok_r(line, " \t", &save);
		if(!kw || kw[0] == '#') continue;
		if(!strcmp(kw, "user")){
			char *name = strtok_r(NULL, "", &save);
			in_own_block = name && !strcmp(name, user);
			if(in_own_block) *listed = true;
			continue;
		}
		if(strcmp(kw, "topic") && strcmp(kw, "pattern")) continue;
		if(!strcmp(kw, "topic") && !in_own_block) continue;
		access = strtok_r(NULL, " \t", &save);
		topic = strtok_r(NULL, "", &save);
		if(!access) continue;
		if(!topic){                 /* "topic <t>": readwrite */
			topic = access;
			access = "readwrite";
		}
		if(strcmp(access, "read") && strcmp(access, "readwrite")) continue;
		if(filter && !strcmp(kw, "pattern") && covers(topic, filter, user, id)) granted = 1;
		if(filter && !strcmp(kw, "topic") && covers(topic, filter, user, id)) granted = 1;
	}
	fclose(fp);
	return granted;
}

static int deny(const char *user, const char *what, const char *topic)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "timeclock_acl: denied %s %s for %s", what,
	                     topic ? topic : "", user ? user : "(no user)");
	return MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	const char *id = mosquitto_client_id(ed->client);
	const char *filter = ed->topic;
	const char *what = ed->access == MOSQ_ACL_SUBSCRIBE ? "SUBSCRIBE"
	                   : ed->access == MOSQ_ACL_WRITE ? "PUBLISH"
	                   : ed->access == MOSQ_ACL_READ ? "READ" : "UNSUBSCRIBE";
	bool listed = false, device;
	int granted;
	(void)event; (void)userdata;

	/* (1) */
	if(!user || !id || strcmp(user, id)) return deny(user, what, filter);
	device = have_device_re && regexec(&device_re, user, 0, NULL, 0) == 0;
	if(ed->access == MOSQ_ACL_SUBSCRIBE && filter && !strncmp(filter, "$share/", 7)){
		const char *rest = strchr(filter + 7, '/');
		granted = rest ? scan_acl(user, id, rest + 1, &listed) : 0;
		/* (3) devices never join a shared subscription */
		if(!listed) return deny(user, what, filter);
		return granted ? MOSQ_ERR_SUCCESS : deny(user, what, filter);
	}
	granted = scan_acl(user, id, ed->access == MOSQ_ACL_SUBSCRIBE ? filter : NULL, &listed);
	/* (2) */
	if(!listed && !device) return deny(user, what, filter);
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			return granted ? MOSQ_ERR_SUCCESS : deny(user, what, filter);
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		default:
			return MOSQ_ERR_PLUGIN_DEFER;   /* (5) */
	}
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *opts, int count)
{
	int i;
	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < count; i++){
		if(!strcmp(opts[i].key, "acl_file")){
			free(acl_file);
			acl_file = strdup(opts[i].value);
		}else if(!strcmp(opts[i].key, "device_re")){
			if(have_device_re) regfree(&device_re);
			have_device_re = regcomp(&device_re, opts[i].value, REG_EXTENDED | REG_NOSUB) == 0;
			if(!have_device_re){
				mosquitto_log_printf(MOSQ_LOG_ERR, "timeclock_acl: bad device_re");
				return MOSQ_ERR_INVAL;
			}
		}
	}
	if(!acl_file || !have_device_re){
		mosquitto_log_printf(MOSQ_LOG_ERR,
		                     "timeclock_acl: plugin_opt_acl_file and plugin_opt_device_re are required");
		return MOSQ_ERR_INVAL;
	}
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int count)
{
	(void)userdata; (void)opts; (void)count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	free(acl_file);
	acl_file = NULL;
	if(have_device_re) regfree(&device_re);
	have_device_re = false;
	return MOSQ_ERR_SUCCESS;
}
