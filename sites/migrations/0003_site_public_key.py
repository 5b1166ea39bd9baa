from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("sites", "0002_site_key_generation"),
    ]

    operations = [
        migrations.AddField(
            model_name="site",
            name="public_key",
            field=models.CharField(editable=False, max_length=64, null=True, unique=True),
        ),
        migrations.AddField(
            model_name="site",
            name="allowed_origins",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
